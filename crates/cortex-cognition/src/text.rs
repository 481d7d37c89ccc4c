//! Word tokens, stop words and term counts: the extractive statistics every
//! tool is built from. No stemming, no models.
//!
//! - A *token* is a run of letters and digits, lower-cased; an apostrophe
//!   between two such characters stays inside the token (`don't`).
//! - A *term* is a token of at least two characters that is not a stop word
//!   ([`STOP_WORDS`], a small built-in English list).
//! - A *query term* is a distinct token of the query that is not a stop word;
//!   a query made only of stop words keeps all its distinct tokens.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

/// The built-in English stop words, sorted (so lookups can binary-search).
pub const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "aren't",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "can't",
    "could",
    "couldn't",
    "did",
    "didn't",
    "do",
    "does",
    "doesn't",
    "doing",
    "don't",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "get",
    "got",
    "had",
    "hadn't",
    "has",
    "hasn't",
    "have",
    "haven't",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "i'd",
    "i'll",
    "i'm",
    "i've",
    "if",
    "in",
    "into",
    "is",
    "isn't",
    "it",
    "it's",
    "its",
    "itself",
    "just",
    "let's",
    "me",
    "more",
    "most",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "same",
    "she",
    "should",
    "shouldn't",
    "so",
    "some",
    "such",
    "than",
    "that",
    "that's",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "there's",
    "these",
    "they",
    "they're",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "very",
    "was",
    "wasn't",
    "we",
    "we're",
    "were",
    "weren't",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "won't",
    "would",
    "wouldn't",
    "you",
    "you'd",
    "you'll",
    "you're",
    "you've",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

/// True when `token` (lower-case) is a stop word.
pub fn is_stop_word(token: &str) -> bool {
    STOP_WORDS.binary_search(&token).is_ok()
}

/// The lower-cased word tokens of `text`, in order.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_alphanumeric() {
            current.extend(c.to_lowercase());
        } else if matches!(c, '\'' | '\u{2019}')
            && !current.is_empty()
            && chars.peek().is_some_and(|next| next.is_alphanumeric())
        {
            current.push('\'');
        } else if !current.is_empty() {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The terms of `text`: tokens of two or more characters that are not stop
/// words, in order.
pub fn terms(text: &str) -> impl Iterator<Item = String> {
    tokens(text)
        .into_iter()
        .filter(|t| t.chars().nth(1).is_some() && !is_stop_word(t))
}

/// A term and how often it occurs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TermCount {
    /// The term (lower-case).
    pub term: String,
    /// How many times it occurs.
    pub count: usize,
}

/// The `n` most frequent terms over `texts`: by count, most first, then
/// alphabetically.
pub fn top_terms<'a>(texts: impl IntoIterator<Item = &'a str>, n: usize) -> Vec<TermCount> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for text in texts {
        for term in terms(text) {
            *counts.entry(term).or_default() += 1;
        }
    }
    let mut counted: Vec<TermCount> = counts
        .into_iter()
        .map(|(term, count)| TermCount { term, count })
        .collect();
    counted.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.term.cmp(&b.term)));
    counted.truncate(n);
    counted
}

/// The distinct tokens of `query` that are not stop words, in order of first
/// appearance; all its distinct tokens when every one is a stop word.
pub fn query_terms(query: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    let distinct: Vec<String> = tokens(query)
        .into_iter()
        .filter(|t| seen.insert(t.clone()))
        .collect();
    let content: Vec<String> = distinct
        .iter()
        .filter(|t| !is_stop_word(t))
        .cloned()
        .collect();
    if content.is_empty() {
        distinct
    } else {
        content
    }
}

/// How many of `query_terms` occur among the tokens of `content`.
pub fn overlap(query_terms: &[String], content: &str) -> usize {
    if query_terms.is_empty() {
        return 0;
    }
    let tokens: HashSet<String> = tokens(content).into_iter().collect();
    query_terms.iter().filter(|t| tokens.contains(*t)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_are_sorted_and_unique() {
        assert!(STOP_WORDS.windows(2).all(|w| w[0] < w[1]));
        assert!(is_stop_word("the") && is_stop_word("don't") && !is_stop_word("rust"));
    }

    #[test]
    fn tokens_are_lower_cased_words() {
        assert_eq!(
            tokens("Hello, World! Don't  stop—rust2024 'quoted'"),
            ["hello", "world", "don't", "stop", "rust2024", "quoted"]
        );
        assert!(tokens("  ... ").is_empty());
    }

    #[test]
    fn top_terms_count_and_order() {
        let top = top_terms(["Rust and tokio", "rust is fast", "Tokio, rust"], 2);
        assert_eq!(
            top,
            [
                TermCount {
                    term: "rust".into(),
                    count: 3
                },
                TermCount {
                    term: "tokio".into(),
                    count: 2
                },
            ]
        );
    }

    #[test]
    fn query_terms_drop_stop_words_unless_nothing_is_left() {
        assert_eq!(
            query_terms("What is the Rust borrow checker, rust?"),
            ["rust", "borrow", "checker"]
        );
        assert_eq!(query_terms("what is it"), ["what", "is", "it"]);
        assert!(query_terms("?!").is_empty());
    }

    #[test]
    fn overlap_counts_distinct_query_terms() {
        let q = query_terms("rust borrow checker");
        assert_eq!(overlap(&q, "The borrow checker in Rust; rust!"), 3);
        assert_eq!(overlap(&q, "nothing here"), 0);
    }
}
