//! Spelling help shared by the stack-file and agent-config parsers: edit
//! distance, "did you mean", and serde's stock messages reworded the way skein
//! words its errors (`unknown key "x"`, `unknown value "y": use a or b`).
//!
//! Pure string functions; private to the crate.

/// Optimal-string-alignment distance: insertions, deletions, substitutions
/// and swaps of two neighbouring characters each cost 1.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for (i, cell) in d.iter_mut().step_by(width).enumerate() {
        *cell = i;
    }
    for (j, cell) in d.iter_mut().take(width).enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

/// The candidate closest to `word`, if it is within edit distance 2 (and
/// closer than the word is long, so "x" does not suggest "y").
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = 2.min(word.chars().count().saturating_sub(1));
    candidates
        .into_iter()
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `unknown key "paralelism" (did you mean "parallelism"?)`, or, with no close
/// match, the keys allowed here.
pub(crate) fn unknown_key(key: &str, known: &[&str]) -> String {
    match closest(key, known.iter().copied()) {
        Some(s) => format!("unknown key {key:?} (did you mean {s:?}?)"),
        None if known.is_empty() => format!("unknown key {key:?}: nothing is allowed here"),
        None => format!(
            "unknown key {key:?}: the keys allowed here are {}",
            known.join(", ")
        ),
    }
}

/// `unknown value "glboal" (did you mean "global"?): use replicated or global`.
pub(crate) fn unknown_value(value: &str, allowed: &[&str]) -> String {
    let list = match allowed {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    };
    match closest(value, allowed.iter().copied()) {
        Some(s) => format!("unknown value {value:?} (did you mean {s:?}?): use {list}"),
        None => format!("unknown value {value:?}: use {list}"),
    }
}

/// The words serde puts between backticks, in order.
fn backticked(msg: &str) -> Vec<&str> {
    msg.split('`').skip(1).step_by(2).collect()
}

/// A serde message reworded. `unknown_key` is set when the message is about an
/// unknown field, so the caller can locate that key.
pub(crate) struct Reworded {
    pub message: String,
    pub unknown_key: Option<String>,
}

/// Rewords serde's stock messages (`unknown field`, `unknown variant`,
/// `missing field`, `duplicate field`); anything else is kept as it is.
pub(crate) fn reword(msg: &str) -> Reworded {
    let words = backticked(msg);
    let keep = |m: &str| Reworded {
        message: m.to_string(),
        unknown_key: None,
    };
    if msg.starts_with("unknown field `") {
        let Some((key, known)) = words.split_first() else {
            return keep(msg);
        };
        return Reworded {
            message: unknown_key(key, known),
            unknown_key: Some(key.to_string()),
        };
    }
    if msg.starts_with("unknown variant `") {
        if let Some((value, allowed)) = words.split_first() {
            return keep(&unknown_value(value, allowed));
        }
    }
    if msg.starts_with("missing field `") {
        if let Some(key) = words.first() {
            return keep(&format!("missing key {key:?}"));
        }
    }
    if msg.starts_with("duplicate field `") {
        if let Some(key) = words.first() {
            return keep(&format!("key {key:?} is given twice: keep one"));
        }
    }
    keep(&plain_types(msg))
}

/// serde names Rust types in "expected u64"; say what a user writes instead.
fn plain_types(msg: &str) -> String {
    [
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected u32", "expected a whole number (0 or more)"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
    ]
    .iter()
    .fold(msg.to_string(), |m, (from, to)| {
        // Only whole words: "expected u64" but not "expected u64s".
        match m.find(from) {
            Some(i) if !m[i + from.len()..].starts_with(|c: char| c.is_alphanumeric()) => {
                format!("{}{to}{}", &m[..i], &m[i + from.len()..])
            }
            _ => m,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_edits_and_swaps() {
        assert_eq!(distance("paralelism", "parallelism"), 1);
        assert_eq!(distance("imgae", "image"), 1);
        assert_eq!(distance("image", "image"), 0);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn closest_needs_a_near_match() {
        let keys = ["parallelism", "delay", "monitor"];
        assert_eq!(closest("paralelism", keys), Some("parallelism"));
        assert_eq!(closest("dealy", keys), Some("delay"));
        assert_eq!(closest("colour", keys), None);
        assert_eq!(closest("x", ["y"]), None);
    }

    #[test]
    fn rewords_serde_messages() {
        let r = reword("unknown field `paralelism`, expected one of `parallelism`, `delay`");
        assert_eq!(
            r.message,
            r#"unknown key "paralelism" (did you mean "parallelism"?)"#
        );
        assert_eq!(r.unknown_key.as_deref(), Some("paralelism"));
        let r = reword("unknown field `zzz`, expected `a` or `b`");
        assert_eq!(
            r.message,
            r#"unknown key "zzz": the keys allowed here are a, b"#
        );
        let r = reword("unknown variant `glboal`, expected `replicated` or `global`");
        assert_eq!(
            r.message,
            r#"unknown value "glboal" (did you mean "global"?): use replicated or global"#
        );
        assert!(r.unknown_key.is_none());
        assert_eq!(
            reword("missing field `target`").message,
            r#"missing key "target""#
        );
        assert_eq!(reword("invalid type: map").message, "invalid type: map");
        assert_eq!(
            reword("invalid value: integer `-1`, expected u64").message,
            "invalid value: integer `-1`, expected a whole number (0 or more)"
        );
    }
}
