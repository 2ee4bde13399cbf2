//! The compiled rules of one guardrail: every keyword in one Aho-Corasick automaton, every
//! regex (inline, from packs, and the PII detectors) in one `RegexSet`. Both run in time
//! linear in the text; the regex crate has no backtracking.

use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, Input, MatchKind};
use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use super::live::Liveness;
use super::pii::{self, Check};
use crate::raw::Rule;

/// Compiled regexes may use this much memory each (the default 10 MiB is too tight for a
/// set of the PII detectors with their bounded repetitions).
const REGEX_SIZE_LIMIT: usize = 64 << 20;

/// One match: where it is, and the label masking puts in its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub start: usize,
    pub end: usize,
    pub label: Arc<str>,
}

#[derive(Debug)]
struct Keyword {
    word: Box<[u8]>,
    case_sensitive: bool,
    whole_word: bool,
    label: Arc<str>,
}

#[derive(Debug)]
struct Pattern {
    regex: Regex,
    check: Check,
    label: Arc<str>,
}

#[derive(Debug, Default)]
pub struct Matcher {
    /// ASCII case-insensitive, overlapping: case-sensitive keywords are confirmed byte for
    /// byte on a hit, so both kinds share one automaton.
    keywords: Option<AhoCorasick>,
    words: Vec<Keyword>,
    set: Option<RegexSet>,
    patterns: Vec<Pattern>,
    /// Every rule in one automaton that streams step through (see `live.rs`).
    pub live: Option<Liveness>,
}

impl Matcher {
    /// Compiles rules; an error names the rule (`rules[2]`) relative to the list given.
    pub fn compile(rules: &[&Rule]) -> Result<Self, (usize, String)> {
        let mut words = Vec::new();
        let mut sources: Vec<(String, Check, Arc<str>)> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            match rule {
                Rule::Keyword {
                    words: ws,
                    case_sensitive,
                    whole_word,
                    label,
                } => {
                    let label: Arc<str> = Arc::from(label.as_deref().unwrap_or("keyword"));
                    for w in ws {
                        if w.is_empty() {
                            return Err((i, "keywords must not be empty".into()));
                        }
                        words.push(Keyword {
                            word: w.as_bytes().into(),
                            case_sensitive: *case_sensitive,
                            whole_word: *whole_word,
                            label: label.clone(),
                        });
                    }
                }
                Rule::Regex { pattern, label } => {
                    let label: Arc<str> = Arc::from(label.as_deref().unwrap_or("regex"));
                    sources.push((pattern.clone(), Check::None, label));
                }
                Rule::Pii { types } => {
                    for t in types {
                        let label: Arc<str> = Arc::from(pii::label(*t));
                        for (p, check) in pii::patterns(*t) {
                            sources.push((p, check, label.clone()));
                        }
                    }
                }
            }
        }
        let mut patterns = Vec::with_capacity(sources.len());
        for (src, check, label) in &sources {
            let regex = RegexBuilder::new(src)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| (rule_of(rules, patterns.len()), format!("invalid regex: {e}")))?;
            patterns.push(Pattern {
                regex,
                check: *check,
                label: label.clone(),
            });
        }
        let set = if sources.is_empty() {
            None
        } else {
            Some(
                RegexSetBuilder::new(sources.iter().map(|(s, _, _)| s))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| (0, format!("the rules do not compile together: {e}")))?,
            )
        };
        let keywords = if words.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .match_kind(MatchKind::Standard)
                    .ascii_case_insensitive(true)
                    .build(words.iter().map(|w| &w.word))
                    .map_err(|e| (0, format!("the keywords do not compile: {e}")))?,
            )
        };
        let sources_only: Vec<String> = sources.iter().map(|(s, _, _)| s.clone()).collect();
        let word_bytes: Vec<&[u8]> = words.iter().map(|w| &*w.word).collect();
        let live = Liveness::build(&sources_only, &word_bytes)
            .map_err(|e| (0, format!("the rules do not compile for streams: {e}")))?;
        Ok(Self {
            keywords,
            words,
            set,
            patterns,
            live,
        })
    }

    /// Every match that starts at or after `from`; the text before `from` is context only
    /// (word boundaries). Matches may overlap; `out` is appended to.
    pub fn find(&self, hay: &str, from: usize, out: &mut Vec<Found>) {
        if let Some(ac) = &self.keywords {
            for m in ac.find_overlapping_iter(Input::new(hay).range(from..)) {
                let w = &self.words[m.pattern().as_usize()];
                let (s, e) = (m.start(), m.end());
                if w.case_sensitive && hay.as_bytes()[s..e] != *w.word {
                    continue;
                }
                if w.whole_word && !(is_boundary(hay, s) && is_boundary(hay, e)) {
                    continue;
                }
                // A case-insensitive ASCII hit can still split a multi-byte character only
                // if the keyword itself does, which a valid UTF-8 keyword cannot.
                out.push(Found {
                    start: s,
                    end: e,
                    label: w.label.clone(),
                });
            }
        }
        let Some(set) = &self.set else { return };
        if from >= hay.len() {
            return;
        }
        for i in set.matches_at(hay, from).iter() {
            let p = &self.patterns[i];
            let mut at = from;
            while at <= hay.len() {
                let Some(m) = p.regex.find_at(hay, at) else { break };
                if m.end() > m.start() && pii::passes(p.check, hay, m.start(), m.end()) {
                    out.push(Found {
                        start: m.start(),
                        end: m.end(),
                        label: p.label.clone(),
                    });
                }
                at = if m.end() > m.start() {
                    m.end()
                } else {
                    next_char(hay, m.end())
                };
            }
        }
    }

    /// Whether anything matches in `hay`.
    pub fn is_match(&self, hay: &str) -> bool {
        let mut found = Vec::new();
        self.find(hay, 0, &mut found);
        !found.is_empty()
    }
}

/// The index of the rule the n-th compiled pattern came from (for error paths).
fn rule_of(rules: &[&Rule], n: usize) -> usize {
    let mut seen = 0;
    for (i, r) in rules.iter().enumerate() {
        let count = match r {
            Rule::Keyword { .. } => 0,
            Rule::Regex { .. } => 1,
            Rule::Pii { types } => types.iter().map(|t| pii::patterns(*t).len()).sum(),
        };
        if n < seen + count {
            return i;
        }
        seen += count;
    }
    0
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// No word character on both sides of byte offset `i`.
fn is_boundary(hay: &str, i: usize) -> bool {
    let before = hay[..i].chars().next_back().is_some_and(is_word_char);
    let after = hay[i..].chars().next().is_some_and(is_word_char);
    !(before && after)
}

fn next_char(hay: &str, i: usize) -> usize {
    hay[i..].chars().next().map_or(hay.len() + 1, |c| i + c.len_utf8())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::PiiType;

    fn kw(words: &[&str], case_sensitive: bool, whole_word: bool) -> Rule {
        Rule::Keyword {
            words: words.iter().map(|w| (*w).to_owned()).collect(),
            case_sensitive,
            whole_word,
            label: None,
        }
    }

    fn found(m: &Matcher, hay: &str) -> Vec<(usize, usize, String)> {
        let mut out = Vec::new();
        m.find(hay, 0, &mut out);
        out.into_iter().map(|f| (f.start, f.end, f.label.to_string())).collect()
    }

    #[test]
    fn keywords_case_and_whole_word() {
        let m = Matcher::compile(&[&kw(&["Falcon"], true, false), &kw(&["cat"], false, true)]).unwrap();
        assert_eq!(found(&m, "project Falcon"), [(8, 14, "keyword".into())]);
        assert!(found(&m, "project falcon").is_empty());
        assert_eq!(found(&m, "a CAT sat").len(), 1);
        assert!(found(&m, "concatenate").is_empty());
    }

    #[test]
    fn regex_and_pii_with_checks() {
        let m = Matcher::compile(&[
            &Rule::Regex {
                pattern: r"(?i)project\s+falcon".into(),
                label: Some("codename".into()),
            },
            &Rule::Pii {
                types: vec![PiiType::CreditCard, PiiType::Email],
            },
        ])
        .unwrap();
        assert_eq!(found(&m, "PROJECT  falcon")[0].2, "codename");
        assert_eq!(found(&m, "card 4111 1111 1111 1111 ok")[0].2, "credit_card");
        assert!(found(&m, "card 4111 1111 1111 1112 ok").is_empty());
        assert_eq!(found(&m, "mail bob@example.com now")[0], (5, 20, "email".into()));
    }

    #[test]
    fn context_before_from_decides_boundaries_but_is_not_matched() {
        let m = Matcher::compile(&[&kw(&["cat"], false, true)]).unwrap();
        let mut out = Vec::new();
        m.find("xcat", 1, &mut out);
        assert!(out.is_empty());
        m.find("cat cat", 1, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].start, 4);
    }

    #[test]
    fn bad_regex_names_its_rule() {
        let err = Matcher::compile(&[
            &kw(&["a"], false, false),
            &Rule::Regex {
                pattern: "(".into(),
                label: None,
            },
        ])
        .unwrap_err();
        assert_eq!(err.0, 1);
        assert!(err.1.contains("invalid regex"));
    }
}
