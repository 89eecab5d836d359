//! What a window keeps of an application log's records: counts per
//! (logger, level), lines, and per level the top-K message templates
//! (deterministic Space-Saving summaries, [`crate::top::SpaceSaving`]).
//! Memory per window is bounded: at most [`MAX_LOGGERS`] loggers (the rest
//! are counted as [`OTHER_LOGGERS`]) and a summary of `--top-capacity`
//! templates per level.

use std::sync::Arc;

use crate::parse::Level;
use crate::top::{SpaceSaving, TopEntry, TopSpec};

/// Loggers counted by name per window and source.
pub const MAX_LOGGERS: usize = 100;
/// The logger name the loggers beyond [`MAX_LOGGERS`] are counted under.
pub const OTHER_LOGGERS: &[u8] = b"(other loggers)";

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
}

/// What a window reports of its application records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppReport {
    pub lines: u64,
    /// (logger, level, records), by logger then level.
    pub levels: Vec<(String, Level, u64)>,
    /// Per level that has records: (level, records, ranked templates).
    pub templates: Vec<(Level, u64, Vec<TopEntry>)>,
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
        if top.enabled() {
            let c = usize::from(top.capacity.max(top.k));
            self.templates[hit.level.index()]
                .get_or_insert_with(|| SpaceSaving::new(c))
                .insert(hit.template);
        }
    }

    pub fn report(&self, k: usize) -> Arc<AppReport> {
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
        Arc::new(AppReport {
            lines: self.lines,
            levels,
            templates,
        })
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
