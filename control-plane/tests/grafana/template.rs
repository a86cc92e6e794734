//! Grafana template syntax in PromQL (`$var`, `${var}`, `${var:format}`,
//! `[[var]]`, the `$__…` interval variables) and the metric names a query uses.

use std::collections::{BTreeMap, BTreeSet};

/// What Grafana would put for its built-in interval variables with a 15 s
/// scrape interval over a one-hour range.
pub const BUILTINS: &[(&str, &str)] = &[
    ("__rate_interval", "1m"),
    ("__interval", "15s"),
    ("__interval_ms", "15000"),
    ("__range", "1h"),
    ("__range_s", "3600"),
    ("__range_ms", "3600000"),
];

/// Every variable of `names` with a placeholder value (for syntax checks).
pub fn sample_values(names: &[&str]) -> BTreeMap<String, String> {
    names
        .iter()
        .map(|n| ((*n).to_owned(), "x".to_owned()))
        .collect()
}

/// `expr` with every template variable replaced: `values` for the
/// dashboard's own, [`BUILTINS`] for Grafana's. An unknown variable is an error.
pub fn substitute(expr: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(expr.len());
    let mut rest = expr;
    while let Some(at) = rest.find(['$', '[']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let (name, len) = match reference(tail) {
            Some(r) => r,
            None => {
                out.push_str(&tail[..1]);
                rest = &tail[1..];
                continue;
            }
        };
        let value = values
            .get(name)
            .map(String::as_str)
            .or_else(|| BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v))
            .ok_or_else(|| format!("unknown template variable ${name}"))?;
        out.push_str(value);
        rest = &tail[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The variables (by name) `expr` refers to, built-ins excluded.
pub fn variables_used(expr: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (i, _) in expr.match_indices(['$', '[']) {
        if let Some((name, _)) = reference(&expr[i..])
            && !BUILTINS.iter().any(|(b, _)| *b == name)
        {
            used.insert(name.to_owned());
        }
    }
    used
}

/// A variable reference at the start of `s`: its name and length.
fn reference(s: &str) -> Option<(&str, usize)> {
    let ident_len = |t: &str| {
        t.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(t.len())
    };
    if let Some(r) = s.strip_prefix("${") {
        let end = r.find('}')?;
        let name = r[..end].split(':').next().unwrap_or("");
        return (!name.is_empty() && ident_len(name) == name.len()).then_some((name, end + 3));
    }
    if let Some(r) = s.strip_prefix("[[") {
        let end = r.find("]]")?;
        let name = r[..end].split(':').next().unwrap_or("");
        return (!name.is_empty() && ident_len(name) == name.len()).then_some((name, end + 4));
    }
    let r = s.strip_prefix('$')?;
    let n = ident_len(r);
    (n > 0).then_some((&r[..n], n + 1))
}

/// Grafana's value for a multi-value variable in a Prometheus query: the
/// values regex-escaped and joined with `|`.
pub fn join_as_regex(values: &[String]) -> String {
    let escaped: Vec<String> = values
        .iter()
        .map(|v| {
            v.chars()
                .flat_map(|c| {
                    let special = "\\^$.|?*+()[]{}".contains(c);
                    special.then_some('\\').into_iter().chain([c])
                })
                .collect()
        })
        .collect();
    match escaped.len() {
        1 => escaped[0].clone(),
        _ => format!("({})", escaped.join("|")),
    }
}

/// The `fleet_` metric names `expr` mentions (outside string literals).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if matches!(c, '"' | '\'' | '`') {
            let mut escaped = false;
            for (_, d) in chars.by_ref() {
                if escaped {
                    escaped = false;
                } else if d == '\\' && c != '`' {
                    escaped = true;
                } else if d == c {
                    break;
                }
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let word = &expr[i..end];
            if word.starts_with("fleet_") {
                names.insert(word.to_owned());
            }
        } else if c == '$' {
            // A template variable's name is not a metric name.
            while chars
                .peek()
                .is_some_and(|&(_, d)| d.is_ascii_alphanumeric() || d == '_')
            {
                chars.next();
            }
        }
    }
    names
}

/// `name` is in `catalogue`, directly or as a histogram's series.
pub fn in_catalogue(name: &str, catalogue: &BTreeSet<String>) -> bool {
    catalogue.contains(name)
        || ["_bucket", "_sum", "_count"].iter().any(|s| {
            name.strip_suffix(s)
                .is_some_and(|base| catalogue.contains(base))
        })
}

/// `a, b{x=","}, c` → (`a, b{x=","}`, ` c`): split at the last top-level comma.
pub fn split_last_arg(args: &str) -> Option<(&str, &str)> {
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut last = None;
    let mut escaped = false;
    for (i, c) in args.char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' | '`' => quote = Some(c),
                '(' | '{' | '[' => depth += 1,
                ')' | '}' | ']' => depth -= 1,
                ',' if depth == 0 => last = Some(i),
                _ => {}
            },
        }
    }
    last.map(|i| (&args[..i], &args[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_variable_syntax_is_substituted() {
        let v = vals(&[("device", "cam-01")]);
        let got = substitute(
            r#"rate(m{device="$device",a="${device}",b="${device:raw}",c="[[device]]"}[$__rate_interval]) / $__range_s"#,
            &v,
        )
        .unwrap();
        assert_eq!(
            got,
            r#"rate(m{device="cam-01",a="cam-01",b="cam-01",c="cam-01"}[1m]) / 3600"#
        );
    }

    #[test]
    fn an_unknown_variable_is_an_error_and_plain_dollars_stay() {
        assert!(
            substitute("m{d=\"$nope\"}", &BTreeMap::new())
                .unwrap_err()
                .contains("$nope")
        );
        assert_eq!(
            substitute(r#"m{d=~"a$"}[5m]"#, &BTreeMap::new()).unwrap(),
            r#"m{d=~"a$"}[5m]"#
        );
    }

    #[test]
    fn variables_used_excludes_builtins() {
        let used = variables_used("rate(m{a=\"$device\", b=\"${rollout}\"}[$__rate_interval])");
        assert_eq!(used.into_iter().collect::<Vec<_>>(), ["device", "rollout"]);
    }

    #[test]
    fn metric_names_skip_strings_labels_and_variables() {
        let names = metric_names(
            r#"sum by (app) (fleet_a_total{x="fleet_not_a_metric"}) / on(app) fleet_b and $fleet_var"#,
        );
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["fleet_a_total", "fleet_b"]
        );
    }

    #[test]
    fn histogram_series_belong_to_their_family() {
        let cat: BTreeSet<String> = ["fleet_update_duration_seconds".to_owned()].into();
        assert!(in_catalogue("fleet_update_duration_seconds_bucket", &cat));
        assert!(!in_catalogue("fleet_update_seconds_bucket", &cat));
    }

    #[test]
    fn multi_values_join_as_an_escaped_regex() {
        assert_eq!(join_as_regex(&["a.b".into(), "c".into()]), r"(a\.b|c)");
        assert_eq!(join_as_regex(&["a".into()]), "a");
    }

    #[test]
    fn label_values_splits_at_the_last_top_level_comma() {
        assert_eq!(
            split_last_arg(r#"m{a="x,y", b=~"(c|d)"}, device"#),
            Some((r#"m{a="x,y", b=~"(c|d)"}"#, " device"))
        );
        assert_eq!(split_last_arg("device"), None);
    }
}
