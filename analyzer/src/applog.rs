//! What a window keeps of an application log's records: counts per
//! (logger, level), lines, per level the top-K message templates
//! (deterministic Space-Saving summaries, [`crate::top::SpaceSaving`]), and
//! the templates it holds, which a source's [`TemplateHistory`] tells new
//! from known when the window is final. Memory per window is bounded: at
//! most [`MAX_LOGGERS`] loggers (the rest are counted as
//! [`OTHER_LOGGERS`]), a summary of `--top-capacity` templates per level
//! and [`MAX_WINDOW_TEMPLATES`] distinct templates.

use std::collections::{HashSet, VecDeque};

use crate::parse::Level;
use crate::top::{SpaceSaving, TopEntry, TopSpec};

/// Loggers counted by name per window and source.
pub const MAX_LOGGERS: usize = 100;
/// The logger name the loggers beyond [`MAX_LOGGERS`] are counted under.
pub const OTHER_LOGGERS: &[u8] = b"(other loggers)";

/// Distinct templates a window remembers for the first-seen check; a
/// template beyond them is not checked in that window (it is in the next
/// window it appears in with fewer).
pub const MAX_WINDOW_TEMPLATES: usize = 256;
/// Templates a source's history remembers; beyond them the oldest is
/// forgotten (and would be new again).
pub const MAX_HISTORY_TEMPLATES: usize = 2048;
/// New templates reported per window (all of them join the history).
pub const MAX_NEW_PER_WINDOW: usize = 100;

/// One application record as a window counts it.
#[derive(Debug, Clone, Copy)]
pub struct AppHit<'a> {
    pub level: Level,
    pub logger: &'a [u8],
    /// Its message template ([`crate::template`]).
    pub template: &'a [u8],
    /// Lines the record spans (a traceback's included).
    pub lines: u32,
}

/// The application part of a window's aggregates.
#[derive(Debug, Clone, Default)]
pub struct AppAgg {
    lines: u64,
    /// Per logger (first seen first), records per level.
    loggers: Vec<(Box<[u8]>, [u64; 7])>,
    index: crate::FastMap<Box<[u8]>, u32>,
    /// Per level, the top templates (when top-K is on).
    templates: [Option<SpaceSaving>; 7],
    /// The window's distinct templates by id: (level of its first record,
    /// records, text), at most [`MAX_WINDOW_TEMPLATES`].
    seen: crate::FastMap<u64, (Level, u64, Box<[u8]>)>,
}

/// A template first seen in a source's history in this window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTemplate {
    pub level: Level,
    pub template: String,
    pub id: String,
    /// Its records in the window.
    pub count: u64,
}

/// What a window reports of its application records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppReport {
    pub lines: u64,
    /// (logger, level, records), by logger then level.
    pub levels: Vec<(String, Level, u64)>,
    /// Per level that has records: (level, records, ranked templates).
    pub templates: Vec<(Level, u64, Vec<TopEntry>)>,
    /// Templates not in the source's history before this window (final
    /// windows only), by text.
    pub new_templates: Vec<NewTemplate>,
}

impl AppAgg {
    #[inline]
    pub fn add(&mut self, hit: &AppHit<'_>, top: &TopSpec) {
        self.lines += u64::from(hit.lines);
        let slot = match self.index.get(hit.logger) {
            Some(&i) => i as usize,
            None if self.loggers.len() < MAX_LOGGERS => {
                let i = self.loggers.len();
                self.loggers.push((hit.logger.into(), [0; 7]));
                self.index.insert(hit.logger.into(), i as u32);
                i
            }
            None => match self.index.get(OTHER_LOGGERS) {
                Some(&i) => i as usize,
                None => {
                    let i = self.loggers.len();
                    self.loggers.push((OTHER_LOGGERS.into(), [0; 7]));
                    self.index.insert(OTHER_LOGGERS.into(), i as u32);
                    i
                }
            },
        };
        self.loggers[slot].1[hit.level.index()] += 1;
        let id = crate::template::template_hash(hit.template);
        let n = self.seen.len();
        match self.seen.entry(id) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().1 += 1,
            std::collections::hash_map::Entry::Vacant(e) if n < MAX_WINDOW_TEMPLATES => {
                e.insert((hit.level, 1, hit.template.into()));
            }
            std::collections::hash_map::Entry::Vacant(_) => {}
        }
        if top.enabled() {
            let c = usize::from(top.capacity.max(top.k));
            self.templates[hit.level.index()]
                .get_or_insert_with(|| SpaceSaving::new(c))
                .insert(hit.template);
        }
    }

    /// Records at `level` or above (not `OTHER`) per logger that has any.
    pub fn errors_per_logger(&self, level: Level) -> Vec<(String, u64)> {
        self.loggers
            .iter()
            .filter_map(|(name, counts)| {
                let n: u64 = Level::ALL
                    .iter()
                    .zip(counts)
                    .filter(|(&l, _)| l >= level && l != Level::Other)
                    .map(|(_, &n)| n)
                    .sum();
                (n > 0).then(|| (String::from_utf8_lossy(name).into_owned(), n))
            })
            .collect()
    }

    /// The window's templates that `history` does not know, which it then
    /// remembers (in template order, so the history is the same whatever
    /// order the records came in).
    pub fn new_templates(&self, history: &mut TemplateHistory) -> Vec<NewTemplate> {
        let mut all: Vec<(&[u8], u64, Level, u64)> = self
            .seen
            .iter()
            .map(|(&id, (level, n, text))| (&text[..], id, *level, *n))
            .collect();
        all.sort_unstable();
        let mut out = Vec::new();
        for (text, id, level, count) in all {
            if history.remember(id) && out.len() < MAX_NEW_PER_WINDOW {
                out.push(NewTemplate {
                    level,
                    template: String::from_utf8_lossy(text).into_owned(),
                    id: format!("{id:016x}"),
                    count,
                });
            }
        }
        out
    }

    pub fn report(&self, k: usize) -> AppReport {
        let mut levels: Vec<(String, Level, u64)> = self
            .loggers
            .iter()
            .flat_map(|(name, counts)| {
                let name = String::from_utf8_lossy(name).into_owned();
                Level::ALL
                    .iter()
                    .zip(counts)
                    .filter(|(_, &n)| n > 0)
                    .map(move |(&l, &n)| (name.clone(), l, n))
            })
            .collect();
        levels.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let templates = Level::ALL
            .iter()
            .zip(&self.templates)
            .filter_map(|(&l, s)| s.as_ref().map(|s| (l, s.total(), s.top(k))))
            .collect();
        AppReport {
            lines: self.lines,
            levels,
            templates,
            new_templates: Vec::new(),
        }
    }
}

/// The templates a source has had in its final windows, oldest first, at
/// most [`MAX_HISTORY_TEMPLATES`]. Stored in the restore point beside the
/// max event time ([`TemplateHistory::encode`]), so a new owner of the
/// partition tells new templates from known ones as the old owner would.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateHistory {
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

impl TemplateHistory {
    /// Remembers `id`; true when it was not known.
    pub fn remember(&mut self, id: u64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > MAX_HISTORY_TEMPLATES {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// `t1:` and the ids as 16 hex digits each, oldest first.
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(3 + 16 * self.order.len());
        s.push_str("t1:");
        for id in &self.order {
            s.push_str(&format!("{id:016x}"));
        }
        s
    }

    pub fn decode(s: &str) -> Result<TemplateHistory, String> {
        let body = s
            .strip_prefix("t1:")
            .ok_or_else(|| format!("not a template history (t1:…): {:?}", &s[..s.len().min(20)]))?;
        if body.len() % 16 != 0 {
            return Err(format!(
                "template history of {} hex digits, not a multiple of 16",
                body.len()
            ));
        }
        let mut h = TemplateHistory::default();
        for i in (0..body.len()).step_by(16) {
            let id = body
                .get(i..i + 16)
                .and_then(|x| u64::from_str_radix(x, 16).ok())
                .ok_or_else(|| format!("template history: not hex at {i}"))?;
            h.remember(id);
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_logger_and_level_and_templates_per_level() {
        let spec = TopSpec::default();
        let mut a = AppAgg::default();
        let hit = |level, logger: &'static str, template: &'static str, lines| AppHit {
            level,
            logger: logger.as_bytes(),
            template: template.as_bytes(),
            lines,
        };
        for _ in 0..3 {
            a.add(&hit(Level::Info, "web", "served <num>", 1), &spec);
        }
        a.add(
            &hit(Level::Error, "web", "failed <num> | KeyError: <str>", 5),
            &spec,
        );
        a.add(&hit(Level::Info, "db", "query <num> ms", 1), &spec);
        let r = a.report(10);
        assert_eq!(r.lines, 9);
        let mut h = TemplateHistory::default();
        h.remember(crate::template::template_hash(b"served <num>"));
        let new = a.new_templates(&mut h);
        assert_eq!(
            new.iter()
                .map(|n| (n.template.as_str(), n.level, n.count))
                .collect::<Vec<_>>(),
            vec![
                ("failed <num> | KeyError: <str>", Level::Error, 1),
                ("query <num> ms", Level::Info, 1)
            ],
            "by text; the known one is not new"
        );
        assert_eq!(
            new[0].id,
            crate::template::template_id(b"failed <num> | KeyError: <str>")
        );
        assert!(a.new_templates(&mut h).is_empty(), "known now");
        assert_eq!(TemplateHistory::decode(&h.encode()).unwrap(), h);
        assert_eq!(
            r.levels,
            vec![
                ("db".into(), Level::Info, 1),
                ("web".into(), Level::Info, 3),
                ("web".into(), Level::Error, 1)
            ]
        );
        assert_eq!(r.templates.len(), 2);
        assert_eq!(r.templates[0].0, Level::Info);
        assert_eq!(r.templates[0].1, 4);
        assert_eq!(r.templates[0].2[0].key, "served <num>");
        assert_eq!(r.templates[0].2[0].count, 3);
        assert_eq!(r.templates[1].2[0].key, "failed <num> | KeyError: <str>");
    }

    #[test]
    fn the_history_forgets_its_oldest_beyond_its_size_and_reads_back() {
        let mut h = TemplateHistory::default();
        for id in 0..MAX_HISTORY_TEMPLATES as u64 + 3 {
            assert!(h.remember(id));
        }
        assert_eq!(h.len(), MAX_HISTORY_TEMPLATES);
        assert!(h.remember(0), "the oldest was forgotten");
        assert!(!h.remember(5));
        let back = TemplateHistory::decode(&h.encode()).unwrap();
        assert_eq!(back, h);
        assert!(TemplateHistory::decode("1;2;3").is_err());
        assert!(TemplateHistory::decode("t1:abc").is_err());
        assert!(TemplateHistory::decode("t1:zzzzzzzzzzzzzzzz").is_err());
        assert_eq!(TemplateHistory::decode("t1:").unwrap().len(), 0);
    }

    #[test]
    fn loggers_beyond_the_limit_are_counted_together() {
        let spec = TopSpec::default();
        let mut a = AppAgg::default();
        let names: Vec<String> = (0..MAX_LOGGERS + 50).map(|i| format!("l{i}")).collect();
        for n in &names {
            a.add(
                &AppHit {
                    level: Level::Info,
                    logger: n.as_bytes(),
                    template: b"t",
                    lines: 1,
                },
                &spec,
            );
        }
        let r = a.report(10);
        assert_eq!(r.levels.len(), MAX_LOGGERS + 1);
        let other = r
            .levels
            .iter()
            .find(|l| l.0.as_bytes() == OTHER_LOGGERS)
            .unwrap();
        assert_eq!(other.2, 50);
        assert_eq!(
            r.levels.iter().map(|l| l.2).sum::<u64>(),
            names.len() as u64
        );
    }
}
