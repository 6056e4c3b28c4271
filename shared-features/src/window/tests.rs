//! The incremental windows against a brute-force oracle: the window of every accepted event,
//! collected and folded from scratch.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;

use super::*;
use crate::spec::Agg;

const FUNCS: [(AggFn, Option<usize>); 10] = [
    (AggFn::Count, None),
    (AggFn::Count, Some(1)),
    (AggFn::Sum, Some(1)),
    (AggFn::Mean, Some(1)),
    (AggFn::Min, Some(1)),
    (AggFn::Max, Some(1)),
    (AggFn::Std, Some(1)),
    (AggFn::Last, Some(1)),
    (AggFn::DistinctCount, Some(2)),
    (AggFn::DistinctCount, Some(1)),
];

/// Row layout: key, x, cat, then one column per aggregate.
fn window(length_ms: i64, include_current: bool) -> Window {
    Window {
        name: "w".into(),
        key: 0,
        length_ms,
        include_current,
        aggs: FUNCS
            .iter()
            .enumerate()
            .map(|(i, &(func, field))| Agg {
                name: format!("a{i}"),
                func,
                field,
            })
            .collect(),
        first_col: 3,
    }
}

/// One event: key (None is a null key), time, x, category.
type Ev = (Option<u8>, i64, Option<i32>, Option<u8>);

fn row(&(k, _, x, c): &Ev) -> Vec<Value> {
    let mut r = vec![
        k.map_or(Value::Null, |k| Value::Str(format!("k{k}").into())),
        x.map_or(Value::Null, |x| Value::Float(f64::from(x))),
        c.map_or(Value::Null, |c| Value::Str(format!("c{c}").into())),
    ];
    r.resize(3 + FUNCS.len(), Value::Null);
    r
}

/// What the aggregates must be: folded from scratch over the window, oldest first.
fn oracle(window: &[&Ev]) -> Vec<Value> {
    let xs: Vec<f64> = window.iter().filter_map(|e| e.2.map(f64::from)).collect();
    let distinct = |f: &dyn Fn(&Ev) -> Option<i64>| {
        let mut v: Vec<i64> = window.iter().filter_map(|e| f(e)).collect();
        v.sort_unstable();
        v.dedup();
        Value::Int(v.len() as i64)
    };
    let sum = xs.iter().fold(0.0, |s, x| s + x);
    let n = xs.len();
    vec![
        Value::Int(window.len() as i64),
        Value::Int(n as i64),
        Value::Float(sum),
        if n == 0 {
            Value::Null
        } else {
            Value::Float(sum / n as f64)
        },
        xs.iter()
            .copied()
            .reduce(f64::min)
            .map_or(Value::Null, Value::Float),
        xs.iter()
            .copied()
            .reduce(f64::max)
            .map_or(Value::Null, Value::Float),
        if n < 2 {
            Value::Null
        } else {
            let mean = sum / n as f64;
            let ss: f64 = xs.iter().map(|x| (x - mean) * (x - mean)).sum();
            Value::Float((ss / (n - 1) as f64).sqrt())
        },
        xs.last().map_or(Value::Null, |x| Value::Float(*x)),
        distinct(&|e: &Ev| e.3.map(i64::from)),
        distinct(&|e: &Ev| e.2.map(i64::from)),
    ]
}

/// Whether `e` is late for `state`, as [`crate::Stages`] refuses it (more than the lateness
/// behind its key's newest event).
fn late(state: &WindowState, e: &Ev, lateness_ms: i64) -> bool {
    let key = e.0.map(|k| Key::Str(format!("k{k}").into()));
    key.as_ref()
        .and_then(|k| state.watermark(k))
        .is_some_and(|mark| e.1 < mark.saturating_sub(lateness_ms))
}

/// Feed `events` through a window state the way [`crate::Stages`] does (late events refused
/// first) and check every accepted event's aggregates against the oracle.
fn check(events: &[Ev], length_ms: i64, lateness_ms: i64, include_current: bool) {
    let w = window(length_ms, include_current);
    let mut state = WindowState::new(&w);
    let mut accepted: Vec<(usize, &Ev)> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let t = e.1;
        if late(&state, e, lateness_ms) {
            continue;
        }
        let mut r = row(e);
        state.update(&w, t, &mut r, lateness_ms, None);
        let mut win: Vec<(usize, &Ev)> = accepted
            .iter()
            .copied()
            .filter(|(_, a)| e.0.is_some() && a.0 == e.0 && a.1 > t - length_ms && a.1 <= t)
            .collect();
        win.sort_by_key(|(j, a)| (a.1, *j));
        let mut win: Vec<&Ev> = win.into_iter().map(|(_, a)| a).collect();
        if include_current {
            win.push(e);
        }
        let want = oracle(&win);
        for (j, (got, want)) in r[3..].iter().zip(&want).enumerate() {
            let close = match (got, want) {
                // std is a different (more accurate) computation than the two-pass oracle.
                (Value::Float(a), Value::Float(b)) if FUNCS[j].0 == AggFn::Std => {
                    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
                }
                _ => got == want,
            };
            assert!(
                close,
                "event {i} {e:?}: {:?} is {got:?}, want {want:?}",
                FUNCS[j].0
            );
        }
        if e.0.is_some() {
            accepted.push((i, e));
        }
    }
}

fn stream() -> impl Strategy<Value = Vec<Ev>> {
    // Times mostly move forward, often stay (ties), sometimes step back (out of order) or far
    // back (late); steps of the window length's size put events exactly on the boundary.
    prop::collection::vec(
        (
            prop::option::weighted(0.95, 0u8..3),
            prop_oneof![4 => 0i64..3, 2 => Just(10i64), 1 => -12i64..0, 1 => Just(-40i64)],
            prop::option::weighted(0.85, -20i32..20),
            prop::option::weighted(0.9, 0u8..4),
        ),
        1..150,
    )
    .prop_map(|steps| {
        let mut t = 0;
        steps
            .into_iter()
            .map(|(k, dt, x, c)| {
                t += dt;
                (k, t, x, c)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn incremental_windows_equal_the_oracle(events in stream(), include_current in any::<bool>()) {
        check(&events, 10, 15, include_current);
    }

    #[test]
    fn incremental_windows_equal_the_oracle_without_lateness(events in stream()) {
        check(&events, 10, 0, false);
    }
}

/// A window without `std` keeps no mean and squared deviations in its parts (`welford` is
/// off); every other aggregate must come out the same bits as in a window that keeps them.
fn check_lean(events: &[Ev], lateness_ms: i64, include_current: bool) {
    let full = window(10, include_current);
    let mut lean = full.clone();
    lean.aggs.retain(|a| a.func != AggFn::Std);
    let (mut a, mut b) = (WindowState::new(&full), WindowState::new(&lean));
    assert!(a.welford && !b.welford);
    for e in events {
        if late(&a, e, lateness_ms) {
            continue;
        }
        let (mut ra, mut rb) = (row(e), row(e));
        a.update(&full, e.1, &mut ra, lateness_ms, None);
        b.update(&lean, e.1, &mut rb, lateness_ms, None);
        let kept: Vec<&Value> = ra[3..]
            .iter()
            .zip(FUNCS)
            .filter(|(_, (f, _))| *f != AggFn::Std)
            .map(|(v, _)| v)
            .collect();
        let got: Vec<&Value> = rb[3..3 + lean.aggs.len()].iter().collect();
        assert_eq!(got, kept, "event {e:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn a_window_without_std_computes_the_other_aggregates_alike(
        events in stream(),
        include_current in any::<bool>(),
    ) {
        check_lean(&events, 15, include_current);
    }
}

/// 50,000 events of one key at one instant: every event's window is every earlier one, and
/// each aggregate is known in closed form. Cheap because each event costs O(1).
#[test]
fn a_hot_key_of_50000_events_at_one_instant() {
    let w = window(3_600_000, false);
    let mut state = WindowState::new(&w);
    let n: i64 = 50_000;
    let mut last = Vec::new();
    for i in 1..=n {
        let mut r = row(&(Some(0), 0, None, None));
        r[1] = Value::Float(i as f64);
        r[2] = Value::Int(i % 7);
        state.update(&w, 1_000, &mut r, 0, None);
        let m = i - 1; // earlier events: x = 1..=m
        assert_eq!(r[3], Value::Int(m));
        assert_eq!(
            r[5],
            Value::Float((m * (m + 1) / 2) as f64),
            "sum of 1..={m}"
        );
        if m > 0 {
            assert_eq!(r[4], Value::Int(m));
            assert_eq!(r[6], Value::Float((m + 1) as f64 / 2.0), "mean of 1..={m}");
            assert_eq!(
                (&r[7], &r[8], &r[10]),
                (
                    &Value::Float(1.0),
                    &Value::Float(m as f64),
                    &Value::Float(m as f64)
                )
            );
            assert_eq!(r[11], Value::Int(m.min(7)), "distinct categories");
            assert_eq!(r[12], Value::Int(m), "every x is distinct");
        }
        last = r;
    }
    // The sample std of 1..=m is sqrt(m (m + 1) / 12).
    let m = (n - 1) as f64;
    let Value::Float(std) = last[9] else {
        panic!("std of 49,999 values")
    };
    let want = (m * (m + 1.0) / 12.0).sqrt();
    assert!((std - want).abs() <= 1e-9 * want, "{std} vs {want}");
    assert_eq!(state.entries(), n as usize);
}

/// The window is `(t - length, t]`: an entry exactly one length old is out, one a millisecond
/// younger is in, and the stacks keep that through flips.
#[test]
fn boundaries_hold_through_flips() {
    let w = window(10, false);
    let mut state = WindowState::new(&w);
    let mut counts = Vec::new();
    for t in [0, 0, 5, 9, 10, 10, 19, 20, 30, 45] {
        let mut r = row(&(Some(0), t, Some(1), Some(0)));
        state.update(&w, t, &mut r, 0, None);
        counts.push(r[3].as_i64().unwrap());
    }
    // 10 sees (0, 10]: 5 and 9 (the two at 0 are exactly one length old); the second 10 also
    // sees the first; 19 sees (9, 19]: the two at 10; 20 sees 19; 30 sees (20, 30]: nothing.
    assert_eq!(counts, [0, 1, 2, 3, 2, 3, 2, 1, 0, 0]);
}

/// Save `state` to bytes and restore it, as a checkpoint does.
fn round_trip(w: &Window, state: &WindowState) -> WindowState {
    let bytes = postcard::to_stdvec(&state.snapshot()).unwrap();
    let snap: WindowSnapshot = postcard::from_bytes(&bytes).unwrap();
    WindowState::restore(w, snap).unwrap()
}

/// Feed `events` to one state that runs through and to one that is saved and restored before
/// every event: every aggregate of every event is the same bits (std included: the restored
/// stacks are the same partial sums, not merely close ones).
fn check_restored(events: &[Ev], lateness_ms: i64, ttl: Option<i64>) {
    let w = window(10, true);
    let mut through = WindowState::new(&w);
    let mut restored = WindowState::new(&w);
    for (i, e) in events.iter().enumerate() {
        restored = round_trip(&w, &restored);
        if late(&through, e, lateness_ms) {
            continue;
        }
        let (mut a, mut b) = (row(e), row(e));
        through.update(&w, e.1, &mut a, lateness_ms, ttl);
        restored.update(&w, e.1, &mut b, lateness_ms, ttl);
        assert_eq!(a, b, "event {i} {e:?}");
        assert_eq!(
            (through.keys(), through.entries()),
            (restored.keys(), restored.entries())
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn a_restored_state_computes_the_same_bits(events in stream(), ttl in prop::option::of(5i64..40)) {
        check_restored(&events, 15, ttl);
    }
}

/// A hot key with tens of flips, saved midway through a front stack.
#[test]
fn a_state_saved_mid_stack_restores_exactly() {
    let w = window(50, false);
    let mut through = WindowState::new(&w);
    let mut restored = WindowState::new(&w);
    for i in 0..2_000i64 {
        if i % 37 == 0 {
            restored = round_trip(&w, &restored);
        }
        let e = (
            Some(0),
            i / 3,
            Some((i % 19) as i32 - 9),
            Some((i % 5) as u8),
        );
        let (mut a, mut b) = (row(&e), row(&e));
        through.update(&w, e.1, &mut a, 0, None);
        restored.update(&w, e.1, &mut b, 0, None);
        assert_eq!(a, b, "event {i}");
    }
}

/// What cannot have come from this window spec is refused with a reason, never a panic.
#[test]
fn a_foreign_or_inconsistent_snapshot_is_refused() {
    let w = window(10, false);
    let mut state = WindowState::new(&w);
    for t in [0, 1, 2, 3] {
        let mut r = row(&(Some(0), t, Some(1), Some(0)));
        state.update(&w, t, &mut r, 0, None);
    }
    let bytes = postcard::to_stdvec(&state.snapshot()).unwrap();
    // Another spec: one field fewer per entry.
    let mut narrow = window(10, false);
    narrow.aggs.truncate(2);
    let snap: WindowSnapshot = postcard::from_bytes(&bytes).unwrap();
    let err = WindowState::restore(&narrow, snap).unwrap_err();
    assert!(err.contains("does not hold 1 values"), "{err}");
    // Every truncation of the bytes either fails to decode or is refused; none panics, and
    // the whole restores.
    for n in 0..bytes.len() {
        if let Ok(snap) = postcard::from_bytes::<WindowSnapshot>(&bytes[..n]) {
            let _ = WindowState::restore(&w, snap);
        }
    }
    // A flipped byte anywhere: no panic.
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        if let Ok(snap) = postcard::from_bytes::<WindowSnapshot>(&b) {
            let _ = WindowState::restore(&w, snap);
        }
    }
    let snap: WindowSnapshot = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(WindowState::restore(&w, snap).unwrap().entries(), 4);
}
