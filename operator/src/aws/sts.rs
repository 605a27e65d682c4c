//! STS: the account id, when the spec does not give it.

use super::Aws;
use crate::Result;

/// The account the operator's credentials belong to (`GetCallerIdentity`).
pub async fn account_id(aws: &Aws, region: &str) -> Result<String> {
    let out = aws.track(
        "sts",
        "GetCallerIdentity",
        "caller",
        aws.sts(region).get_caller_identity().send().await,
    )?;
    Ok(out.account.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::moto::Moto;

    #[tokio::test]
    async fn caller_identity_gives_the_account() {
        let moto = Moto::start();
        let aws = moto.aws().await;
        assert_eq!(account_id(&aws, "eu-west-3").await.unwrap(), "123456789012");
        assert!(
            aws.metrics()
                .encode()
                .contains("operation=\"GetCallerIdentity\",code=\"OK\"} 1")
        );
    }
}
