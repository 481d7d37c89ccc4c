//! Entity extraction by simple, documented rules (no regular expressions, no
//! models).
//!
//! Text is split into lines, lines into whitespace-separated words. Each word
//! loses leading `( [ { < " '` (and typographic quotes) and trailing
//! `. , ; : ! ? ) ] } > " '` (and typographic quotes); what is left is
//! classified:
//!
//! | kind | rule |
//! |---|---|
//! | `url` | starts with `http://` or `https://` (any case) and has more after it |
//! | `email` | `local@domain`: one `@`; the local part of ASCII letters, digits and `. _ % + -`; the domain of two or more dot-separated labels of ASCII letters, digits and `-`, the last one at least two letters |
//! | `mention` | `@` then ASCII letters, digits or `_` (the mention ends at the first other character: `@ann's` → `@ann`) |
//! | `hashtag` | `#` then ASCII letters, digits or `_`, at least one a letter |
//! | `name` | two or more consecutive *Capitalised* words not at a sentence start |
//!
//! A word is *Capitalised* when its first character is an upper-case letter,
//! it has at least one lower-case letter, and every character is a letter,
//! `'` or `-` (`Ada`, `O'Brien`, `Jean-Luc`; not `I`, `NASA`, `R2D2`). A
//! trailing possessive `'s` is dropped and ends the name. A name run is
//! broken by any other word, by punctuation after a word (`Ada, Grace`), by
//! punctuation before one, and by the end of a line.
//!
//! A sentence starts at the beginning of each line and after a word ending in
//! `.`, `!` or `?`. When a run of Capitalised words begins a sentence, its
//! first word is dropped (it is capitalised because it starts the sentence)
//! and the rest is a name if two or more words remain: `Yesterday Ada
//! Lovelace wrote` → `Ada Lovelace`, but `Ada Lovelace wrote` at a sentence
//! start yields nothing.
//!
//! Entities are counted by exact text and kind, and ordered by count (most
//! first), then text, then kind, so the output is deterministic.

use std::collections::HashMap;

use serde::Serialize;

/// What an entity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntityKind {
    /// An e-mail address.
    Email,
    /// An `http` or `https` URL.
    Url,
    /// An `@mention`.
    Mention,
    /// A `#hashtag`.
    Hashtag,
    /// A capitalised multi-word name.
    Name,
}

impl EntityKind {
    /// The kind as it appears in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Url => "url",
            Self::Mention => "mention",
            Self::Hashtag => "hashtag",
            Self::Name => "name",
        }
    }
}

/// An entity and how often it occurs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entity {
    /// The entity as written (trailing punctuation removed).
    pub text: String,
    /// What it is.
    pub kind: EntityKind,
    /// How many times it occurs.
    pub count: usize,
}

/// Counts entities over any number of texts.
#[derive(Debug, Default, Clone)]
pub struct EntityCounter {
    counts: HashMap<(EntityKind, String), usize>,
}

const LEADING: &[char] = &['(', '[', '{', '<', '"', '\'', '\u{201C}', '\u{2018}'];
const TRAILING: &[char] = &[
    '.', ',', ';', ':', '!', '?', ')', ']', '}', '>', '"', '\'', '\u{201D}', '\u{2019}',
];

impl EntityCounter {
    /// An empty counter.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&mut self, kind: EntityKind, text: String) {
        *self.counts.entry((kind, text)).or_default() += 1;
    }

    /// Counts the entities of `text`.
    pub fn add_text(&mut self, text: &str) {
        for line in text.lines() {
            self.add_line(line);
        }
    }

    fn add_line(&mut self, line: &str) {
        let mut sentence_start = true;
        let mut run = NameRun::default();
        for raw in line.split_whitespace() {
            let after_lead = raw.trim_start_matches(LEADING);
            let core = after_lead.trim_end_matches(TRAILING);
            let has_lead = after_lead.len() != raw.len();
            let trail = &after_lead[core.len()..];
            let starts_sentence = sentence_start;
            sentence_start = trail.contains(['.', '!', '?']);

            if let Some((word, possessive)) = capitalised(core) {
                if has_lead {
                    run.flush(self);
                }
                run.push(word, starts_sentence);
                if possessive || !trail.is_empty() {
                    run.flush(self);
                }
                continue;
            }
            run.flush(self);
            if let Some((kind, text)) = classify(core) {
                self.add(kind, text);
            }
        }
        run.flush(self);
    }

    /// The entities counted so far, most frequent first, then by text and
    /// kind.
    pub fn into_entities(self) -> Vec<Entity> {
        let mut entities: Vec<Entity> = self
            .counts
            .into_iter()
            .map(|((kind, text), count)| Entity { text, kind, count })
            .collect();
        entities.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.text.cmp(&b.text))
                .then_with(|| a.kind.cmp(&b.kind))
        });
        entities
    }
}

/// The entities of one text (see the module documentation for the rules).
pub fn extract(text: &str) -> Vec<Entity> {
    let mut counter = EntityCounter::new();
    counter.add_text(text);
    counter.into_entities()
}

/// Consecutive Capitalised words being collected.
#[derive(Default)]
struct NameRun<'a> {
    words: Vec<&'a str>,
    at_sentence_start: bool,
}

impl<'a> NameRun<'a> {
    fn push(&mut self, word: &'a str, starts_sentence: bool) {
        if self.words.is_empty() {
            self.at_sentence_start = starts_sentence;
        }
        self.words.push(word);
    }

    fn flush(&mut self, counter: &mut EntityCounter) {
        let skip = usize::from(self.at_sentence_start);
        if self.words.len() >= skip + 2 {
            counter.add(EntityKind::Name, self.words[skip..].join(" "));
        }
        self.words.clear();
        self.at_sentence_start = false;
    }
}

/// `word` without a possessive `'s`, and whether it had one, when it is
/// Capitalised.
fn capitalised(word: &str) -> Option<(&str, bool)> {
    let (word, possessive) = match word
        .strip_suffix("'s")
        .or_else(|| word.strip_suffix("\u{2019}s"))
    {
        Some(stem) => (stem, true),
        None => (word, false),
    };
    let mut chars = word.chars();
    let first = chars.next()?;
    let rest = chars.as_str();
    let ok = first.is_uppercase()
        && rest.chars().any(char::is_lowercase)
        && rest
            .chars()
            .all(|c| c.is_alphabetic() || matches!(c, '\'' | '-' | '\u{2019}'));
    ok.then_some((word, possessive))
}

/// The URL, e-mail, mention or hashtag `word` is, if any.
fn classify(word: &str) -> Option<(EntityKind, String)> {
    let lower = word.to_ascii_lowercase();
    for scheme in ["http://", "https://"] {
        if lower.starts_with(scheme) && word.len() > scheme.len() {
            return Some((EntityKind::Url, word.to_string()));
        }
    }
    if is_email(word) {
        return Some((EntityKind::Email, word.to_string()));
    }
    let tag = |prefix: char| -> Option<&str> {
        let rest = word.strip_prefix(prefix)?;
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        (!name.is_empty()).then_some(name)
    };
    if let Some(name) = tag('@') {
        return Some((EntityKind::Mention, format!("@{name}")));
    }
    tag('#')
        .filter(|name| name.chars().any(|c| c.is_ascii_alphabetic()))
        .map(|name| (EntityKind::Hashtag, format!("#{name}")))
}

fn is_email(word: &str) -> bool {
    let Some((local, domain)) = word.split_once('@') else {
        return false;
    };
    let labels: Vec<&str> = domain.split('.').collect();
    !local.is_empty()
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-'))
        && labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(String, &'static str, usize)> {
        extract(text)
            .into_iter()
            .map(|e| (e.text, e.kind.as_str(), e.count))
            .collect()
    }

    fn has(text: &str, entity: &str, kind: &str) -> bool {
        pairs(text)
            .iter()
            .any(|(t, k, _)| t == entity && *k == kind)
    }

    #[test]
    fn each_kind_is_found() {
        let text = "Mail ann.lee+x@example.co.uk or see https://example.org/a?b=1, \
                    ping @ann_lee about #rust2024 with Ada Lovelace.";
        assert_eq!(
            pairs(text),
            [
                ("#rust2024".to_string(), "hashtag", 1),
                ("@ann_lee".to_string(), "mention", 1),
                ("Ada Lovelace".to_string(), "name", 1),
                ("ann.lee+x@example.co.uk".to_string(), "email", 1),
                ("https://example.org/a?b=1".to_string(), "url", 1),
            ]
        );
    }

    #[test]
    fn sentence_starts_drop_the_first_word() {
        assert!(has("Yesterday Ada Lovelace wrote.", "Ada Lovelace", "name"));
        assert!(pairs("Ada Lovelace wrote.").is_empty());
        assert!(pairs("It rained. Ada Lovelace wrote.").is_empty());
        assert!(has(
            "It rained. Then Grace Hopper spoke",
            "Grace Hopper",
            "name"
        ));
        assert!(pairs("fine\nAda Lovelace").is_empty());
    }

    #[test]
    fn runs_break_at_punctuation_and_possessives() {
        assert!(pairs("met Ada, Grace and Alan").is_empty());
        assert!(has(
            "met Ada Lovelace's friend Charles Babbage",
            "Ada Lovelace",
            "name"
        ));
        assert!(has(
            "met Ada Lovelace's friend Charles Babbage",
            "Charles Babbage",
            "name"
        ));
        assert!(has(
            "we read The New York Times today",
            "The New York Times",
            "name"
        ));
        assert!(pairs("I saw NASA FAQ pages").is_empty());
    }

    #[test]
    fn counts_and_order_are_deterministic() {
        let e = extract("#b #a #b @z @z @z see http://x.io and http://x.io");
        let got: Vec<(&str, usize)> = e.iter().map(|e| (e.text.as_str(), e.count)).collect();
        assert_eq!(got, [("@z", 3), ("#b", 2), ("http://x.io", 2), ("#a", 1)]);
    }

    #[test]
    fn near_misses_are_ignored() {
        assert!(pairs("a@b, x@y.z, @, #, #42, http://, ftp://x.org").is_empty());
    }
}
