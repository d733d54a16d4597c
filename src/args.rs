//! Command-line parsing helpers: value parsers whose messages say what to pass, and clap
//! errors folded onto the one line every other error uses.

/// `--n-embd` and the other sizes. clap's own parser would say "invalid digit found in
/// string" for `-3`; this says what is expected.
pub fn count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a whole number of at least 1".into()),
    }
}

/// `--steps` and other step counts (0 allowed where the option says so).
pub fn steps(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| "expected a whole number of steps (0 or more)".into())
}

/// `--logit-scale`: a finite number > 0.
pub fn positive(s: &str) -> Result<f32, String> {
    crate::loss::parse_positive(s)
        .ok_or_else(|| "expected a finite number > 0, such as 0.46".into())
}

/// A clap error as one line (without the leading `error: `): the message, then any tip,
/// then where to find the usage.
#[cfg(not(target_arch = "wasm32"))]
pub fn clap_error_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let tips: Vec<&str> = lines.filter_map(|l| l.strip_prefix("tip: ")).collect();
    let mut out = first.to_string();
    for t in tips {
        out.push_str("; ");
        out.push_str(t);
    }
    out.push_str("; see --help for the options");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_steps() {
        assert_eq!(count("16"), Ok(16));
        assert!(count("0").is_err() && count("-3").is_err() && count("x").is_err());
        assert_eq!(steps("0"), Ok(0));
        assert!(steps("-1").unwrap_err().contains("whole number"));
        assert_eq!(positive("0.46"), Ok(0.46));
        for bad in ["0", "-1", "NaN", "inf", "x"] {
            assert!(positive(bad).unwrap_err().contains("> 0"), "{bad}");
        }
    }
}
