//! A strict, line-by-line reading of Prometheus text (format 0.0.4), for
//! tests of `/metrics`: prometheus-client writes the format but has no
//! reader.
//!
//! [`parse`] accepts `# HELP`, `# TYPE` and other comment lines, and sample
//! lines `name{label="value",…} value`, and checks what a scraper would
//! reject or misread: malformed names, label names or escapes, a value that
//! is not a number, a `# TYPE` given twice or after its samples, a sample of
//! no declared family, a series given twice, and histogram buckets that are
//! not cumulative or whose `+Inf` bucket is not the `_count`.

use std::collections::{BTreeMap, BTreeSet};

/// A series' labels, sorted by name.
type Labels = Vec<(String, String)>;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (`foo_total`, `foo_bucket`, …).
    pub name: String,
    /// Its labels, in the order written.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed exposition.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    /// Every sample, in order.
    pub samples: Vec<Sample>,
    /// The declared type of each family.
    pub types: BTreeMap<String, String>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include `labels`, if
    /// exactly one matches.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut matching = self.matching(name, labels);
        let first = matching.next()?;
        matching.next().is_none().then_some(first.value)
    }

    /// The samples `name` whose labels include `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
    }

    /// How many series (sample lines) there are.
    pub fn series(&self) -> usize {
        self.samples.len()
    }
}

/// Reads `text`, or says which line is wrong and why.
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut seen_samples: BTreeSet<String> = BTreeSet::new();
    let mut series: BTreeSet<(String, Labels)> = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let fail = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.trim_start().splitn(3, ' ').collect();
            match words.as_slice() {
                ["HELP", name, ..] if !valid_name(name) => return Err(fail("bad name")),
                ["TYPE", name, kind] => {
                    if !valid_name(name) {
                        return Err(fail("bad name"));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(kind) {
                        return Err(fail("unknown type"));
                    }
                    if seen_samples.contains(*name) {
                        return Err(fail("TYPE after the family's samples"));
                    }
                    if out
                        .types
                        .insert(name.to_string(), kind.to_string())
                        .is_some()
                    {
                        return Err(fail("TYPE given twice"));
                    }
                }
                ["TYPE", ..] => return Err(fail("TYPE without a type")),
                _ => {}
            }
            continue;
        }
        let sample = parse_sample(line).map_err(|why| fail(&why))?;
        let family = family_of(&sample.name, &out.types)
            .ok_or_else(|| fail("a sample of no declared family"))?;
        seen_samples.insert(family.to_string());
        let mut key = sample.labels.clone();
        key.sort();
        if !series.insert((sample.name.clone(), key)) {
            return Err(fail("series given twice"));
        }
        out.samples.push(sample);
    }
    check_histograms(&out)?;
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    valid_name(name) && !name.contains(':')
}

/// The declared family `name` belongs to.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        matches!(
            types.get(base).map(String::as_str),
            Some("histogram" | "summary")
        )
        .then_some(base)
    })
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err("bad metric name".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let end = loop {
            // A label name up to `=`, or the closing brace.
            let start = match chars.peek() {
                Some((_, '}')) => break chars.next().map(|(i, _)| i),
                Some((i, _)) => *i,
                None => return Err("unclosed labels".into()),
            };
            let eq = inner[start..].find('=').ok_or("label without `=`")? + start;
            let key = &inner[start..eq];
            if !valid_label_name(key) {
                return Err(format!("bad label name {key:?}"));
            }
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted".into());
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        _ => return Err("bad escape in a label value".into()),
                    },
                    Some('\n') | None => return Err("unterminated label value".into()),
                    Some(c) => value.push(c),
                }
            }
            if labels.iter().any(|(k, _): &(String, String)| k == key) {
                return Err(format!("label {key} given twice"));
            }
            labels.push((key.to_string(), value));
            match chars.peek().map(|(_, c)| *c) {
                Some(',') => {
                    chars.next();
                }
                Some('}') => {}
                _ => return Err("expected `,` or `}` after a label".into()),
            }
        };
        let end = end.ok_or("unclosed labels")?;
        rest = &inner[end + 1..];
    }
    let mut parts = rest
        .strip_prefix(' ')
        .ok_or("no space before the value")?
        .split(' ');
    let value = parts.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse::<f64>()
            .map_err(|_| format!("value {v:?} is not a number"))?,
    };
    if let Some(timestamp) = parts.next()
        && timestamp.parse::<i64>().is_err()
    {
        return Err("bad timestamp".into());
    }
    if parts.next().is_some() {
        return Err("text after the value".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Buckets cumulative, `+Inf` present and equal to `_count`, per series.
fn check_histograms(exposition: &Exposition) -> Result<(), String> {
    for (family, kind) in &exposition.types {
        if kind != "histogram" {
            continue;
        }
        let bucket = format!("{family}_bucket");
        let count = format!("{family}_count");
        let mut by_series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in exposition.samples.iter().filter(|s| s.name == bucket) {
            let le = s
                .label("le")
                .ok_or_else(|| format!("{bucket} without `le`"))?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse::<f64>()
                    .map_err(|_| format!("{bucket}: bad le {le:?}"))?
            };
            let mut key: Labels = s
                .labels
                .iter()
                .filter(|(k, _)| k != "le")
                .cloned()
                .collect();
            key.sort();
            by_series.entry(key).or_default().push((le, s.value));
        }
        for (key, mut buckets) in by_series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{family}{key:?}: buckets are not cumulative"));
            }
            let inf = buckets
                .last()
                .filter(|(le, _)| le.is_infinite())
                .ok_or_else(|| format!("{family}{key:?}: no +Inf bucket"))?
                .1;
            let total = exposition
                .samples
                .iter()
                .find(|s| {
                    let mut labels = s.labels.clone();
                    labels.sort();
                    s.name == count && labels == key
                })
                .ok_or_else(|| format!("{family}{key:?}: no _count"))?
                .value;
            if total != inf {
                return Err(format!(
                    "{family}{key:?}: +Inf bucket {inf} but count {total}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_well_formed_exposition() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\\\\\"} 3\n\
                    # TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\nh_count 2\n";
        let e = parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.value("a_total", &[("y", "q\"\\")]), Some(3.0));
        assert_eq!(e.series(), 5);
    }

    #[test]
    fn rejects_what_a_scraper_would() {
        for bad in [
            "a_total 1\n",
            "# TYPE a counter\na{x=1} 1\n",
            "# TYPE a counter\na{x=\"1\"} one\n",
            "# TYPE a counter\na 1\na 2\n",
            "# TYPE a counter\na 1\n# TYPE a counter\n",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
            "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 1\n",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
