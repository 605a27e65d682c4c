//! How PromQL values are written out as Prometheus' HTTP API writes them: sample values,
//! timestamps in seconds, and the plain float form used in error texts and `quantile` labels.

/// Formats a sample value as Prometheus' API does: `NaN`, `+Inf`, `-Inf`, otherwise the shortest
/// representation that round-trips, in exponent form below 1e-6 and from 1e21 on.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let abs = v.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        // Go's 'e' format: mantissa digits, then e, sign and an exponent of at least 2 digits.
        let s = format!("{v:e}");
        let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        let digits = if digits.len() < 2 {
            format!("0{digits}")
        } else {
            digits.to_string()
        };
        return format!("{mant}e{sign}{digits}");
    }
    format!("{v}")
}

/// Formats a millisecond timestamp as Prometheus' API does: seconds with up to three decimals.
pub fn format_timestamp(t: i64) -> String {
    let mut s = String::new();
    write_timestamp(&mut s, t);
    s
}

/// Appends `t` (ms) formatted as [`format_timestamp`] does.
pub fn write_timestamp(out: &mut String, t: i64) {
    if t < 0 {
        out.push('-');
    }
    let t = t.unsigned_abs();
    let frac = t % 1000;
    write_u64(out, t / 1000);
    if frac != 0 {
        out.push('.');
        out.push(char::from(b'0' + (frac / 100) as u8));
        out.push(char::from(b'0' + (frac / 10 % 10) as u8));
        out.push(char::from(b'0' + (frac % 10) as u8));
    }
}

/// Appends `n` in decimal, two digits at a time, without the formatting machinery (the API
/// writes millions of numbers).
pub fn write_u64(out: &mut String, mut n: u64) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    while n >= 100 {
        let p = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        buf[i] = PAIRS[p];
        buf[i + 1] = PAIRS[p + 1];
    }
    if n >= 10 {
        let p = n as usize * 2;
        i -= 2;
        buf[i] = PAIRS[p];
        buf[i + 1] = PAIRS[p + 1];
    } else {
        i -= 1;
        buf[i] = b'0' + n as u8;
    }
    for &b in &buf[i..] {
        out.push(char::from(b));
    }
}

/// Formats a float as Go's `strconv.FormatFloat(v, 'f', -1, 64)`, as `count_values` does.
pub(crate) fn format_float_plain(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_format_like_prometheus() {
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.1), "0.1");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(1e-7), "1e-07");
        assert_eq!(format_value(-1.5e21), "-1.5e+21");
        assert_eq!(format_value(123456789.125), "123456789.125");
        assert_eq!(format_value(1e20), "100000000000000000000");
        assert_eq!(format_value(-0.0), "-0");
    }

    #[test]
    fn timestamps_format_with_millisecond_fraction() {
        assert_eq!(format_timestamp(1500), "1.500");
        assert_eq!(format_timestamp(1000), "1");
        assert_eq!(format_timestamp(1005), "1.005");
        assert_eq!(format_timestamp(-1500), "-1.500");
    }
}
