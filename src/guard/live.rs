//! Where a match may still be under way in a growing text: the streaming guard's hold-back.
//!
//! A stream must not release a byte that a later event could turn into part of a match,
//! whatever the length of the match (a 2 KB JWT, `project\s+falcon` with 300 spaces, a PEM
//! block). For each guardrail, one lazy DFA of all its rules (keywords as literals,
//! regexes and PII detectors with their look-arounds removed, so it accepts a superset
//! of what the rules match) is stepped byte by byte, once per byte, across events. A
//! *thread* is a start position whose anchored run has not died: a match starting there
//! may still complete. Threads in the same DFA state have the same future, so only the
//! earliest is kept; everything before the earliest live thread is final and may be
//! scanned and released. Cost: one DFA step per byte and live thread, never a rescan of
//! held text, so a stream costs time linear in its length.

use std::sync::{Arc, Mutex};

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::hybrid::LazyStateID;
use regex_automata::nfa::thompson;
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};
use regex_syntax::hir::{Capture, Hir, HirKind, Repetition};

/// More live threads than this (a rule set with many overlapping bounded repetitions)
/// and the earliest dropped one holds the text from then on (the safe side).
const MAX_THREADS: usize = 64;
/// Lazy DFA cache per stream text and guardrail; it grows to this at most, then is
/// cleared and the held text replayed.
const CACHE_BYTES: usize = 512 * 1024;
/// Caches kept warm per guardrail for the streams to come.
const MAX_SPARE: usize = 64;

#[derive(Debug)]
pub struct Liveness {
    dfa: DFA,
    /// Caches of finished trackers, warm with the states they built: a new stream starts
    /// with one instead of determinizing the same states again.
    spare: Arc<Mutex<Vec<Cache>>>,
}

impl Liveness {
    /// One automaton for every pattern (regex sources) and keyword; `None` when there are
    /// none. `Err` with a message when the patterns do not compile.
    pub fn build(patterns: &[String], keywords: &[&[u8]]) -> Result<Option<Self>, String> {
        Self::build_with_cache(patterns, keywords, CACHE_BYTES)
    }

    fn build_with_cache(patterns: &[String], keywords: &[&[u8]], cache_bytes: usize) -> Result<Option<Self>, String> {
        let mut hirs = Vec::with_capacity(patterns.len() + keywords.len());
        for p in patterns {
            let hir = regex_syntax::Parser::new().parse(p).map_err(|e| e.to_string())?;
            hirs.push(without_looks(&hir));
        }
        for w in keywords {
            let word = String::from_utf8_lossy(w);
            let hir = regex_syntax::ParserBuilder::new()
                .case_insensitive(true)
                .build()
                .parse(&regex_syntax::escape(&word))
                .map_err(|e| e.to_string())?;
            hirs.push(hir);
        }
        if hirs.is_empty() {
            return Ok(None);
        }
        let nfa = thompson::Compiler::new()
            .configure(
                thompson::Config::new()
                    .which_captures(thompson::WhichCaptures::None)
                    .nfa_size_limit(Some(64 << 20)),
            )
            .build_many_from_hir(&hirs)
            .map_err(|e| e.to_string())?;
        let dfa = DFA::builder()
            .configure(
                DFA::config()
                    .match_kind(MatchKind::All)
                    .cache_capacity(cache_bytes)
                    .skip_cache_capacity_check(true),
            )
            .build_from_nfa(nfa)
            .map_err(|e| e.to_string())?;
        Ok(Some(Self {
            dfa,
            spare: Arc::default(),
        }))
    }

    pub fn tracker(&self) -> Tracker {
        let cache = self
            .spare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| self.dfa.create_cache());
        Tracker {
            clears: cache.clear_count(),
            cache: Some(cache),
            threads: Vec::new(),
            floor: None,
            spare: self.spare.clone(),
        }
    }
}

/// The live threads of one growing text, for one guardrail.
#[derive(Debug)]
pub struct Tracker {
    /// Always `Some` until the tracker is dropped.
    cache: Option<Cache>,
    /// (state, start offset in the text), earliest start first.
    threads: Vec<(LazyStateID, usize)>,
    /// A start held for good: a dropped thread (too many) or a run the DFA gave up on.
    floor: Option<usize>,
    clears: usize,
    spare: Arc<Mutex<Vec<Cache>>>,
}

impl Drop for Tracker {
    /// The cache goes back for the next stream (its state ids die with this tracker).
    fn drop(&mut self) {
        let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
        if let (true, Some(cache)) = (spare.len() < MAX_SPARE, self.cache.take()) {
            spare.push(cache);
        }
    }
}

impl Tracker {
    /// Steps every thread over `text[from..]` (the bytes that just arrived) and starts a
    /// thread at each of them. `text[held..from]` is what is still held from before, for
    /// a replay when the cache was cleared under the threads' feet.
    pub fn advance(&mut self, live: &Liveness, text: &[u8], held: usize, from: usize) {
        let Some(mut cache) = self.cache.take() else { return };
        self.advance_with(live, &mut cache, text, held, from);
        self.cache = Some(cache);
    }

    fn advance_with(&mut self, live: &Liveness, cache: &mut Cache, text: &[u8], held: usize, from: usize) {
        if self.step(live, cache, text, from).is_err() || cache.clear_count() != self.clears {
            // State ids are indexes into the cache: after a clear they mean nothing.
            // Replay what is held, from scratch.
            self.threads.clear();
            if self.step(live, cache, text, held).is_err() {
                self.floor = Some(self.floor.map_or(held, |f| f.min(held)));
                self.threads.clear();
            }
        }
        self.clears = cache.clear_count();
    }

    fn step(&mut self, live: &Liveness, cache: &mut Cache, text: &[u8], from: usize) -> Result<(), ()> {
        let dfa = &live.dfa;
        let start = dfa
            .start_state(cache, &start::Config::new().anchored(Anchored::Yes))
            .map_err(|_| ())?;
        let clears = cache.clear_count();
        for (pos, &b) in text.iter().enumerate().skip(from) {
            for t in self.threads.iter_mut() {
                t.0 = dfa.next_state(cache, t.0, b).map_err(|_| ())?;
            }
            let s = dfa.next_state(cache, start, b).map_err(|_| ())?;
            if cache.clear_count() != clears {
                return Err(());
            }
            self.threads.retain(|t| !t.0.is_dead());
            if !s.is_dead() && !self.threads.iter().any(|t| t.0 == s) {
                self.threads.push((s, pos));
            }
            // Same state, same future: the earlier start is the one that matters.
            if self.threads.len() > 1 {
                let mut seen: Vec<LazyStateID> = Vec::with_capacity(self.threads.len());
                self.threads.retain(|t| {
                    let dup = seen.contains(&t.0);
                    seen.push(t.0);
                    !dup
                });
            }
            if self.threads.len() > MAX_THREADS {
                let (_, dropped) = self.threads.remove(MAX_THREADS);
                self.floor = Some(self.floor.map_or(dropped, |f| f.min(dropped)));
            }
        }
        Ok(())
    }

    /// The earliest position a match may still start at (`None`: everything is final).
    pub fn earliest(&self) -> Option<usize> {
        let first = self.threads.iter().map(|t| t.1).min();
        match (first, self.floor) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The text's first `n` bytes were dropped: positions move down.
    pub fn shift(&mut self, n: usize) {
        for t in self.threads.iter_mut() {
            t.1 = t.1.saturating_sub(n);
        }
        self.floor = self.floor.map(|f| f.saturating_sub(n));
    }
}

/// The same pattern with every look-around (`\b`, `^`, `$`, ...) removed: it matches
/// everything the pattern matches and more, which is the safe side for a hold-back.
fn without_looks(h: &Hir) -> Hir {
    match h.kind() {
        HirKind::Look(_) => Hir::empty(),
        HirKind::Repetition(r) => Hir::repetition(Repetition {
            min: r.min,
            max: r.max,
            greedy: r.greedy,
            sub: Box::new(without_looks(&r.sub)),
        }),
        HirKind::Capture(c) => Hir::capture(Capture {
            index: c.index,
            name: c.name.clone(),
            sub: Box::new(without_looks(&c.sub)),
        }),
        HirKind::Concat(v) => Hir::concat(v.iter().map(without_looks).collect()),
        HirKind::Alternation(v) => Hir::alternation(v.iter().map(without_looks).collect()),
        _ => h.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn earliest_after(patterns: &[&str], words: &[&str], chunks: &[&str]) -> Option<usize> {
        let pats: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        let ws: Vec<&[u8]> = words.iter().map(|w| w.as_bytes()).collect();
        let live = Liveness::build(&pats, &ws).unwrap().unwrap();
        let mut t = live.tracker();
        let mut text = String::new();
        for c in chunks {
            let from = text.len();
            text.push_str(c);
            t.advance(&live, text.as_bytes(), 0, from);
        }
        t.earliest()
    }

    #[test]
    fn holds_from_the_start_of_a_match_in_progress_however_long() {
        let spaces = " ".repeat(300);
        let chunks = ["we call it project", spaces.as_str(), "fal"];
        assert_eq!(earliest_after(&[r"(?i)project\s+falcon"], &[], &chunks), Some(11));
        // Once it cannot match any more, nothing is held.
        let done = ["we call it project", spaces.as_str(), "fax and more"];
        assert_eq!(earliest_after(&[r"(?i)project\s+falcon"], &[], &done), None);
    }

    #[test]
    fn keywords_and_word_boundaries_hold_conservatively() {
        assert_eq!(earliest_after(&[], &["falcon"], &["a Fal"]), Some(2));
        assert_eq!(earliest_after(&[], &["falcon"], &["a Falx"]), None);
        // `\b` is gone from the automaton: `cat\b` stays live after "cat" until the next
        // byte decides.
        assert_eq!(earliest_after(&[r"\bcat\b"], &[], &["the cat"]), Some(4));
        // (A match is reported one byte late by the lazy DFA: held one byte longer.)
        assert_eq!(earliest_after(&[r"\bcat\b"], &[], &["the cat", "s."]), None);
    }

    /// A cache far too small clears all the time; threads are replayed from the held
    /// text and the answer stays what a roomy cache gives.
    #[test]
    fn a_cleared_cache_is_replayed_and_changes_nothing() {
        let pats = vec![
            r"\w{3,40}@\w{2,20}\.\w{2,6}".to_owned(),
            r"(?i)project\s+falcon".to_owned(),
        ];
        let roomy = Liveness::build(&pats, &["naïve".as_bytes()]).unwrap().unwrap();
        let tiny = Liveness::build_with_cache(&pats, &["naïve".as_bytes()], 1)
            .unwrap()
            .unwrap();
        let text = "Ünïcödé wörds, then mail jöhn.döe@exämple.org and project   falc".repeat(3);
        let (mut a, mut b) = (roomy.tracker(), tiny.tracker());
        let mut at = 0;
        for piece in text.as_bytes().chunks(5) {
            let from = at;
            at += piece.len();
            a.advance(&roomy, &text.as_bytes()[..at], 0, from);
            b.advance(&tiny, &text.as_bytes()[..at], 0, from);
            // Conservative: never later than the roomy answer.
            assert!(b.earliest().unwrap_or(at) <= a.earliest().unwrap_or(at), "at {at}");
        }
        assert_eq!(a.earliest(), Some(text.len() - "project   falc".len()));
    }

    #[test]
    fn a_jwt_is_held_whole_across_tiny_deltas() {
        let jwt = format!("eyJhbGciOiJIUzI1NiJ9.{}.{}", "e".repeat(400), "s".repeat(43));
        let pats = [r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"];
        let text = format!("token: {jwt}");
        let chunks: Vec<&str> = text
            .as_bytes()
            .chunks(8)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        assert_eq!(earliest_after(&pats, &[], &chunks), Some(7));
    }
}
