//! When the daemon runs: `SCHEDULE` (a cron expression) read in `SCHEDULE_TIMEZONE`.
//!
//! The syntax is node-cron's, because that is what existing deployments already have in
//! their environment: five fields (`minute hour day-of-month month day-of-week`), or six with
//! the seconds *first*. Two node-cron rules that differ from Vixie cron are kept on purpose:
//! a five-field expression fires at second 0, and day-of-month and day-of-week must *both*
//! match (node-cron ANDs them, Vixie cron ORs them when both are restricted).

use std::fmt;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// The example given in error messages; it is also the usual nightly schedule.
const EXPRESSION_EXAMPLE: &str = "10 5 * * *";
const TIMEZONE_EXAMPLE: &str = "Europe/Paris";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "SCHEDULE=`{value}` is not a valid cron expression ({reason}); expected five fields \
         `minute hour day-of-month month day-of-week` such as `{EXPRESSION_EXAMPLE}` \
         (05:10 every day), or six with the seconds first such as `*/30 * * * * *`"
    )]
    InvalidExpression { value: String, reason: String },

    #[error(
        "SCHEDULE=`{value}` never fires (no date matches all of its fields, e.g. 30 February); \
         fix the day-of-month, month or day-of-week field, e.g. `{EXPRESSION_EXAMPLE}`"
    )]
    NeverFires { value: String },

    #[error(
        "SCHEDULE=`{value}` fires every {every_secs}s, more often than once a minute: each run \
         asks Scalingo's API (60 requests a minute at most) and restores the whole database; use \
         a five-field expression such as `{EXPRESSION_EXAMPLE}`, or set \
         SCHEDULE_ALLOW_FREQUENT=true if you mean it"
    )]
    TooFrequent { value: String, every_secs: u64 },

    #[error(
        "SCHEDULE=`{value}` uses `{token}`, which is not node-cron syntax (accepted: numbers, \
         `*`, ranges `a-b`, steps `/n`, lists `a,b`, and month and day names such as `jan`, \
         `mon`); write it without croner's extensions (`L`, `W`, `#`, `?`)"
    )]
    Unsupported { value: String, token: String },

    #[error(
        "SCHEDULE_TIMEZONE=`{value}` is not a known IANA time zone; set it to a name from the \
         tz database such as `{TIMEZONE_EXAMPLE}`, or unset it for UTC"
    )]
    UnknownTimezone { value: String },
}

/// A parsed `SCHEDULE`, bound to its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    expression: String,
    timezone: Tz,
    cron: Cron,
}

impl Schedule {
    /// Parses `SCHEDULE` and `SCHEDULE_TIMEZONE`. A missing or blank zone means UTC, as in
    /// node-cron.
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let expression = expr.trim();
        let invalid = |reason: String| ScheduleError::InvalidExpression {
            value: expr.to_string(),
            reason,
        };

        // croner also takes a seventh (year) field and `@daily`-style nicknames; node-cron
        // takes neither, and a value that works here must keep working if moved back.
        let fields = expression.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(invalid(format!("it has {fields} fields, not 5 or 6")));
        }

        if let Some(token) = expression
            .split_whitespace()
            .flat_map(|f| f.split([',', '/', '-']))
            .find(|atom| !node_cron_atom(atom))
        {
            return Err(ScheduleError::Unsupported {
                value: expr.to_string(),
                token: token.to_string(),
            });
        }

        let cron = CronParser::builder()
            // Optional: five fields get second 0 and six are read with the seconds first.
            .seconds(Seconds::Optional)
            .dom_and_dow(true)
            .build()
            .parse(expression)
            .map_err(|e| invalid(e.to_string().trim_end_matches('.').to_string()))?;

        let timezone = match timezone.map(str::trim) {
            None | Some("") => Tz::UTC,
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| ScheduleError::UnknownTimezone {
                    value: name.to_string(),
                })?,
        };

        let schedule = Schedule {
            expression: expression.to_string(),
            timezone,
            cron,
        };
        // Without a year field, an expression that fires at all fires within 28 years; one
        // that cannot (`0 0 30 2 *`) would otherwise leave the daemon idle with no error.
        if schedule.next_after(Utc::now()).is_none() {
            return Err(ScheduleError::NeverFires {
                value: expr.to_string(),
            });
        }
        Ok(schedule)
    }

    /// The first firing strictly after `now`, or `None` if there is none (croner's search
    /// stops at year 5000).
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // The fields are wall-clock times in the schedule's zone, so the search must walk
        // that zone's clock (DST shifts the UTC instant of `10 5 * * *` twice a year).
        let local = now.with_timezone(&self.timezone);
        let next = self.cron.find_next_occurrence(&local, false).ok()?;
        let next = next.with_timezone(&Utc);
        // croner works in whole seconds; guard the "strictly after" promise regardless.
        (next > now).then_some(next)
    }

    /// Refuses a schedule whose firings come less than a minute apart (looked at over its
    /// next few firings from now).
    pub fn refuse_frequent(&self) -> Result<(), ScheduleError> {
        let mut at = Utc::now();
        let mut previous: Option<DateTime<Utc>> = None;
        for _ in 0..6 {
            let Some(next) = self.next_after(at) else {
                break;
            };
            if let Some(p) = previous {
                let every = (next - p).num_seconds().max(0) as u64;
                if every < 60 {
                    return Err(ScheduleError::TooFrequent {
                        value: self.expression.clone(),
                        every_secs: every,
                    });
                }
            }
            previous = Some(next);
            at = next;
        }
        Ok(())
    }

    /// The expression and its zone, e.g. `` `10 5 * * *` (Europe/Paris) ``, for logs.
    pub fn describe(&self) -> String {
        format!("`{}` ({})", self.expression, self.timezone.name())
    }

    #[cfg(test)]
    pub fn timezone(&self) -> Tz {
        self.timezone
    }
}

/// One atom of a field, as node-cron reads it: `*`, a number, or a month or day name.
fn node_cron_atom(atom: &str) -> bool {
    const NAMES: [&str; 19] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec", "sun",
        "mon", "tue", "wed", "thu", "fri", "sat",
    ];
    atom == "*"
        || (!atom.is_empty() && atom.bytes().all(|b| b.is_ascii_digit()))
        || NAMES.contains(&atom.to_ascii_lowercase().as_str())
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn croner_extensions_are_refused_and_frequent_schedules_flagged() {
        for bad in ["0 5 L * *", "0 5 * * 5#3", "0 5 15W * *", "0 5 ? * *"] {
            let e = Schedule::parse(bad, None).unwrap_err();
            assert!(matches!(e, ScheduleError::Unsupported { .. }), "{bad}: {e}");
        }
        for ok in [
            "10 5 * * *",
            "0 0 1 jan,jul *",
            "*/15 * * * mon-fri",
            "0 */2 * * *",
        ] {
            let s = Schedule::parse(ok, None).unwrap();
            assert!(s.refuse_frequent().is_ok(), "{ok}");
        }
        for frequent in ["*/1 * * * * *", "* * * * * *", "0,30 * * * * *"] {
            let e = Schedule::parse(frequent, None)
                .unwrap()
                .refuse_frequent()
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("SCHEDULE_ALLOW_FREQUENT=true"),
                "{frequent}: {e}"
            );
        }
        // Once a minute is allowed.
        assert!(
            Schedule::parse("* * * * *", None)
                .unwrap()
                .refuse_frequent()
                .is_ok()
        );
    }

    #[test]
    fn five_fields_fire_at_second_zero_every_day() {
        let s = Schedule::parse("10 5 * * *", None).unwrap();
        assert_eq!(s.timezone(), Tz::UTC);
        assert_eq!(
            s.next_after(utc(2024, 3, 1, 0, 0, 0)),
            Some(utc(2024, 3, 1, 5, 10, 0))
        );
        assert_eq!(
            s.next_after(utc(2024, 3, 1, 5, 10, 0)),
            Some(utc(2024, 3, 2, 5, 10, 0)),
            "strictly after: a firing at `now` is not returned"
        );
    }

    #[test]
    fn six_fields_read_seconds_first() {
        let s = Schedule::parse("*/30 * * * * *", None).unwrap();
        assert_eq!(
            s.next_after(utc(2024, 3, 1, 12, 0, 0)),
            Some(utc(2024, 3, 1, 12, 0, 30))
        );
        // `15 10 5 * * *` is 05:10:15, not 10:05 with a 15 in the day field.
        let s = Schedule::parse("15 10 5 * * *", None).unwrap();
        assert_eq!(
            s.next_after(utc(2024, 3, 1, 0, 0, 0)),
            Some(utc(2024, 3, 1, 5, 10, 15))
        );
    }

    #[test]
    fn every_four_seconds_ticks_four_seconds_apart() {
        let s = Schedule::parse("*/4 * * * * *", None).unwrap();
        let mut t = utc(2024, 3, 1, 12, 0, 1);
        let mut ticks = Vec::new();
        for _ in 0..5 {
            t = s.next_after(t).unwrap();
            ticks.push(t);
        }
        assert_eq!(ticks[0], utc(2024, 3, 1, 12, 0, 4));
        for pair in ticks.windows(2) {
            assert_eq!((pair[1] - pair[0]).num_seconds(), 4);
        }
    }

    #[test]
    fn sub_second_now_is_still_strictly_before_the_result() {
        let s = Schedule::parse("*/4 * * * * *", None).unwrap();
        let now = utc(2024, 3, 1, 12, 0, 3) + chrono::Duration::milliseconds(999);
        assert_eq!(s.next_after(now), Some(utc(2024, 3, 1, 12, 0, 4)));
        let now = utc(2024, 3, 1, 12, 0, 4) + chrono::Duration::milliseconds(1);
        assert_eq!(s.next_after(now), Some(utc(2024, 3, 1, 12, 0, 8)));
    }

    #[test]
    fn paris_wall_clock_follows_daylight_saving() {
        let s = Schedule::parse("10 5 * * *", Some("Europe/Paris")).unwrap();
        // Winter, UTC+1.
        assert_eq!(
            s.next_after(utc(2024, 1, 15, 0, 0, 0)),
            Some(utc(2024, 1, 15, 4, 10, 0))
        );
        // Summer, UTC+2.
        assert_eq!(
            s.next_after(utc(2024, 7, 15, 0, 0, 0)),
            Some(utc(2024, 7, 15, 3, 10, 0))
        );
        assert_eq!(s.describe(), "`10 5 * * *` (Europe/Paris)");
    }

    #[test]
    fn day_of_month_and_day_of_week_must_both_match() {
        // node-cron semantics: the 13th only when it is a Friday (September 2024).
        let s = Schedule::parse("0 0 13 * 5", None).unwrap();
        assert_eq!(
            s.next_after(utc(2024, 1, 1, 0, 0, 0)),
            Some(utc(2024, 9, 13, 0, 0, 0))
        );
    }

    #[test]
    fn invalid_expressions_name_schedule_and_show_an_example() {
        for bad in [
            "not a cron",
            "",
            "* * * *",
            "0 0 0 * * * *",
            "@daily",
            "61 * * * *",
        ] {
            let err = Schedule::parse(bad, None).unwrap_err();
            assert!(
                matches!(err, ScheduleError::InvalidExpression { .. }),
                "{bad:?}: {err:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains("SCHEDULE="), "{msg}");
            assert!(msg.contains(&format!("`{bad}`")), "{msg}");
            assert!(msg.contains("10 5 * * *"), "{msg}");
        }
        let msg = Schedule::parse("61 * * * *", None).unwrap_err().to_string();
        assert!(
            msg.contains("out of bounds)"),
            "croner's reason is kept: {msg}"
        );
    }

    #[test]
    fn an_expression_that_never_fires_is_refused() {
        let err = Schedule::parse("0 0 30 2 *", None).unwrap_err();
        assert!(matches!(err, ScheduleError::NeverFires { .. }), "{err:?}");
        assert!(err.to_string().contains("SCHEDULE=`0 0 30 2 *`"));
        // Rare but real: 29 February.
        assert!(Schedule::parse("0 0 29 2 *", None).is_ok());
    }

    #[test]
    fn unknown_timezone_names_its_variable() {
        let err = Schedule::parse("10 5 * * *", Some("Mars/Olympus")).unwrap_err();
        assert!(matches!(err, ScheduleError::UnknownTimezone { .. }));
        let msg = err.to_string();
        assert!(msg.contains("SCHEDULE_TIMEZONE=`Mars/Olympus`"), "{msg}");
        assert!(msg.contains("Europe/Paris"), "{msg}");
    }

    #[test]
    fn blank_timezone_means_utc() {
        let s = Schedule::parse(" 10 5 * * * ", Some(" ")).unwrap();
        assert_eq!(s.timezone(), Tz::UTC);
        assert_eq!(s.describe(), "`10 5 * * *` (UTC)");
    }
}
