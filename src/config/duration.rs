//! Durations written the way operators write them: `"250ms"`, `"10s"`, `"2m"`.

use std::time::Duration;

/// Parses `<integer><unit>` with unit one of `us`, `ms`, `s`, `m`, `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("missing unit in {text:?} (use us, ms, s, m or h, e.g. \"10s\")"))?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("expected a number before the unit in {text:?}"));
    }
    let amount: u64 = digits.parse().map_err(|_| format!("number too large in {text:?}"))?;
    let duration = match unit {
        "us" => Duration::from_micros(amount),
        "ms" => Duration::from_millis(amount),
        "s" => Duration::from_secs(amount),
        "m" => Duration::from_secs(amount.saturating_mul(60)),
        "h" => Duration::from_secs(amount.saturating_mul(3600)),
        other => return Err(format!("unknown unit {other:?} in {text:?} (use us, ms, s, m or h)")),
    };
    Ok(duration)
}

/// Formats a duration back into the shortest exact config spelling.
pub fn format_duration(duration: Duration) -> String {
    let micros = duration.as_micros();
    if micros == 0 {
        return "0s".to_string();
    }
    for (unit, size) in [
        ("h", 3_600_000_000u128),
        ("m", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1_000),
    ] {
        if micros % size == 0 {
            return format!("{}{unit}", micros / size);
        }
    }
    format!("{micros}us")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn refuses_missing_or_unknown_units() {
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(parse_duration("10d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("ms").unwrap_err().contains("expected a number"));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn formats_round_trip() {
        for text in ["0s", "500us", "250ms", "10s", "2m", "1h", "1500ms"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
