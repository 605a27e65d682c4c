//! Tenant IDs: what `X-Scope-OrgID` may hold. Every role checks IDs here before they become
//! directory names or object-key prefixes.

/// The tenant of requests when multitenancy is disabled.
pub const ANONYMOUS: &str = "anonymous";

/// Tenant ids become directory names and object-key prefixes: Mimir's rules (≤ 150 characters
/// of letters, digits and `!-_.*'()`, not `.` or `..`).
pub fn validate_tenant(t: &str) -> Result<(), String> {
    if t.len() > 150 {
        return Err(format!(
            "tenant ID is too long: max 150 characters, got {}",
            t.len()
        ));
    }
    if t == "." || t == ".." {
        return Err(format!("tenant ID {t:?} is not allowed"));
    }
    if let Some(c) = t
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "!-_.*'()".contains(*c)))
    {
        return Err(format!(
            "tenant ID {t:?} contains unsupported character {c:?}"
        ));
    }
    Ok(())
}
