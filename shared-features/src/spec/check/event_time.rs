//! Checking `[events.time]`: how each event's time is found (a field, or local date and time
//! fields in a time zone).

use super::*;

pub(super) fn event_time(
    c: &Checker<'_>,
    t: &super::raw::RawEventTime,
    span: Range<usize>,
) -> Result<EventTime, SpecError> {
    use FieldType::*;
    let need = |o: &Option<S<String>>, what: &str| -> Result<usize, SpecError> {
        let name = o.as_ref().ok_or_else(|| {
            c.err(
                span.clone(),
                format!("events.time.{what}"),
                format!("`{}` needs `{what}`", t.func.get_ref()),
            )
        })?;
        let col = c.resolve(name, &format!("events.time.{what}"))?;
        c.expect_ty(
            col,
            name,
            &format!("events.time.{what}"),
            if what == "field" {
                &[Timestamp, Int]
            } else {
                &[Int]
            },
        )?;
        Ok(col)
    };
    // Keys that belong to another function are a mistake, not something to ignore.
    let func = t.func.get_ref().as_str();
    let given: [(&str, Option<Range<usize>>); 7] = [
        ("field", t.field.as_ref().map(S::span)),
        ("date", t.date.as_ref().map(S::span)),
        ("hhmm", t.hhmm.as_ref().map(S::span)),
        ("reference_hhmm", t.reference_hhmm.as_ref().map(S::span)),
        ("tz", t.tz.as_ref().map(S::span)),
        ("unit", t.unit.as_ref().map(S::span)),
        ("format", t.format.as_ref().map(S::span)),
    ];
    let takes: &[&str] = match func {
        "field" => &["field", "unit"],
        "local" => &["field", "format", "tz"],
        "local_hhmm" => &["date", "hhmm", "reference_hhmm", "tz"],
        _ => &[],
    };
    if !takes.is_empty()
        && let Some((key, Some(at))) = given
            .iter()
            .find(|(k, at)| at.is_some() && !takes.contains(k))
    {
        return Err(c.err(
            at.clone(),
            format!("events.time.{key}"),
            format!(
                "`{key}` does not apply to `fn = \"{func}\"`, which takes {}",
                takes
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    match func {
        "field" => {
            let col = need(&t.field, "field")?;
            let name = c.layout[col].name.clone();
            let unit = match (c.layout[col].ty, &t.unit) {
                (Int, None) => {
                    return Err(c.err(
                        t.field.as_ref().map_or(span.clone(), S::span),
                        "events.time.unit",
                        format!(
                            "`{name}` is an int: say what it counts since the epoch with `unit = \
                             \"s\"`, \"ms\", \"us\" or \"ns\""
                        ),
                    ));
                }
                (Int, Some(u)) => Some(EpochUnit::parse(u.get_ref()).ok_or_else(|| {
                    c.err(
                        u.span(),
                        "events.time.unit",
                        format!(
                            "unknown unit `{}`: use \"s\", \"ms\", \"us\" or \"ns\"",
                            u.get_ref()
                        ),
                    )
                })?),
                (_, Some(u)) => {
                    return Err(c.err(
                        u.span(),
                        "events.time.unit",
                        format!("`{name}` is a timestamp, which has no unit: drop `unit`"),
                    ));
                }
                (_, None) => None,
            };
            Ok(EventTime::Field { col, unit })
        }
        "local" => {
            let name = t
                .field
                .as_ref()
                .ok_or_else(|| c.err(span.clone(), "events.time.field", "`local` needs `field`"))?;
            let col = c.resolve(name, "events.time.field")?;
            c.expect_ty(col, name, "events.time.field", &[Str])?;
            let format = t.format.as_ref().ok_or_else(|| {
                c.err(
                    span.clone(),
                    "events.time.format",
                    "`local` needs `format`, e.g. \"%Y-%m-%d %H:%M:%S\" (chrono's strftime syntax)",
                )
            })?;
            crate::time::check_local_format(format.get_ref())
                .map_err(|m| c.err(format.span(), "events.time.format", m))?;
            Ok(EventTime::Local {
                col,
                format: format.get_ref().clone(),
                tz: c.tz(t.tz.as_ref(), span.clone(), "events.time")?,
            })
        }
        "local_hhmm" => {
            let date = t.date.as_ref().ok_or_else(|| {
                c.err(
                    span.clone(),
                    "events.time.date",
                    "`local_hhmm` needs `date = [year, month, day]`",
                )
            })?;
            let names = date.get_ref();
            if names.len() != 3 {
                return Err(c.err(
                    date.span(),
                    "events.time.date",
                    "`date` is three int fields: [year, month, day]",
                ));
            }
            let mut cols = [0; 3];
            for (slot, n) in cols.iter_mut().zip(names) {
                *slot = c.resolve(n, "events.time.date")?;
                c.expect_ty(*slot, n, "events.time.date", &[Int])?;
            }
            let reference = match &t.reference_hhmm {
                Some(_) => Some(need(&t.reference_hhmm, "reference_hhmm")?),
                None => None,
            };
            Ok(EventTime::LocalHhmm {
                date: cols,
                hhmm: need(&t.hhmm, "hhmm")?,
                reference,
                tz: c.tz(t.tz.as_ref(), span.clone(), "events.time")?,
            })
        }
        other => Err(c.err(
            t.func.span(),
            "events.time.fn",
            format!("unknown event-time function `{other}`: use field, local or local_hhmm"),
        )),
    }
}
