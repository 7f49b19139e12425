//! Hand-written histories with a known answer: linearizable ones the checker must accept, and
//! the classic anomalies it must reject.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use aspen_check::{
    CheckConfig, Completion, KvHistory, KvModel, OpId, UnknownReason, Verdict, check, check_kv,
};
use common::*;

fn assert_linearizable(history: &KvHistory) {
    let verdict = check_kv(history, &CheckConfig::default());
    assert!(
        verdict.is_linearizable(),
        "expected linearizable, got {verdict:#?}"
    );
    // Locality: checking the whole history at once must agree with checking key by key.
    let whole = check::<KvModel>(history, &CheckConfig::default());
    assert!(
        whole.is_linearizable(),
        "whole-history check disagrees: {whole:#?}"
    );
}

/// Asserts the history is rejected on `key`, blaming `failing_op`; returns the report text.
fn assert_rejected(history: &KvHistory, key: &str, failing_op: OpId) -> String {
    let verdict = check_kv(history, &CheckConfig::default());
    let Verdict::NotLinearizable {
        key: bad_key,
        explanation,
    } = verdict
    else {
        panic!("expected not linearizable, got {verdict:#?}");
    };
    assert_eq!(bad_key, key.as_bytes());
    assert_eq!(explanation.failing_op, failing_op, "{explanation}");
    let whole = check::<KvModel>(history, &CheckConfig::default());
    assert!(
        whole.is_not_linearizable(),
        "whole-history check disagrees: {whole:#?}"
    );
    explanation.text
}

#[test]
fn empty_history_is_linearizable() {
    assert_linearizable(&KvHistory::new());
}

#[test]
fn sequential_history() {
    let mut h = KvHistory::new();
    op(&mut h, 1, get("x"), 0, 10, got(None));
    op(&mut h, 1, put("x", "1"), 20, 30, PUT_OK);
    op(&mut h, 2, get("x"), 40, 50, got(Some("1")));
    op(&mut h, 2, cas("x", Some("0"), "2"), 60, 70, cas_ok(false));
    op(&mut h, 1, cas("x", Some("1"), "2"), 80, 90, cas_ok(true));
    op(&mut h, 3, get("x"), 100, 110, got(Some("2")));
    op(&mut h, 3, delete("x"), 120, 130, deleted(true));
    op(&mut h, 1, delete("x"), 140, 150, deleted(false));
    op(&mut h, 2, cas("x", None, "3"), 160, 170, cas_ok(true));
    op(&mut h, 2, put("y", "a"), 180, 190, PUT_OK);
    op(&mut h, 3, get("x"), 200, 210, got(Some("3")));
    op(&mut h, 3, get("y"), 200, 210, got(Some("a")));
    assert_linearizable(&h);
}

#[test]
fn concurrent_writes_with_reads_seeing_either() {
    // Two overlapping puts; reads overlapping both may see either value, in either order,
    // as long as a later read agrees with the last value the reads settled on.
    for (first_seen, second_seen) in [("1", "2"), ("2", "1"), ("1", "1"), ("2", "2")] {
        let mut h = KvHistory::new();
        op(&mut h, 1, put("x", "1"), 0, 100, PUT_OK);
        op(&mut h, 2, put("x", "2"), 0, 100, PUT_OK);
        op(&mut h, 3, get("x"), 10, 40, got(Some(first_seen)));
        op(&mut h, 4, get("x"), 50, 90, got(Some(second_seen)));
        op(&mut h, 3, get("x"), 200, 210, got(Some(second_seen)));
        assert_linearizable(&h);
    }
}

#[test]
fn reads_flipping_back_during_concurrent_writes_are_rejected() {
    // Once reads saw 1 then 2, both puts have taken effect; a later read seeing 1 is stale.
    let mut h = KvHistory::new();
    op(&mut h, 1, put("x", "1"), 0, 100, PUT_OK);
    op(&mut h, 2, put("x", "2"), 0, 100, PUT_OK);
    op(&mut h, 3, get("x"), 10, 40, got(Some("1")));
    op(&mut h, 4, get("x"), 50, 90, got(Some("2")));
    let stale = op(&mut h, 3, get("x"), 200, 210, got(Some("1")));
    assert_rejected(&h, "x", stale);
}

#[test]
fn operations_meeting_at_one_instant_are_concurrent() {
    let mut h = KvHistory::new();
    op(&mut h, 1, put("x", "1"), 0, 10, PUT_OK);
    op(&mut h, 2, get("x"), 10, 20, got(None));
    assert_linearizable(&h);
}

#[test]
fn indeterminate_write_seen_later() {
    let mut h = KvHistory::new();
    op(&mut h, 1, put("x", "1"), 0, 10, PUT_OK);
    lost(&mut h, 2, put("x", "2"), 20);
    // The write had not yet taken effect for this read, then did: effects may land late.
    op(&mut h, 3, get("x"), 100, 110, got(Some("1")));
    op(&mut h, 3, get("x"), 200, 210, got(Some("2")));
    op(&mut h, 1, get("x"), 300, 310, got(Some("2")));
    assert_linearizable(&h);
}

#[test]
fn indeterminate_write_never_seen() {
    let mut h = KvHistory::new();
    op(&mut h, 1, put("x", "1"), 0, 10, PUT_OK);
    lost(&mut h, 2, put("x", "2"), 20);
    lost(&mut h, 2, cas("x", Some("1"), "3"), 30);
    op(&mut h, 3, get("x"), 100, 110, got(Some("1")));
    op(&mut h, 3, get("x"), 200, 210, got(Some("1")));
    assert_linearizable(&h);
}

#[test]
fn pending_operations_count_as_indeterminate() {
    let mut h = KvHistory::new();
    op(&mut h, 1, put("x", "1"), 0, 10, PUT_OK);
    h.invoke(2, put("x", "2"), 20);
    h.invoke(4, get("x"), 25);
    op(&mut h, 3, get("x"), 100, 110, got(Some("2")));
    assert_linearizable(&h);
}

#[test]
fn indeterminate_write_cannot_take_effect_before_its_invocation() {
    let mut h = KvHistory::new();
    let read = op(&mut h, 1, get("x"), 0, 10, got(Some("2")));
    lost(&mut h, 2, put("x", "2"), 20);
    assert_rejected(&h, "x", read);
}

#[test]
fn stale_read_is_rejected() {
    // Client 1's write of 2 completed; client 3's read started afterwards but saw 1.
    let mut h = KvHistory::new();
    op(&mut h, 1, put("x", "1"), 0, 10, PUT_OK);
    op(&mut h, 1, put("x", "2"), 20, 30, PUT_OK);
    op(&mut h, 2, put("y", "9"), 20, 30, PUT_OK);
    let stale = op(&mut h, 3, get("x"), 40, 50, got(Some("1")));
    let text = assert_rejected(&h, "x", stale);
    println!("{text}");
    assert!(text.contains("client 3"), "{text}");
    assert!(text.contains(r#"{"x": "2"}: Get(Some("2"))"#), "{text}");
    assert!(text.contains(r#"Get("x") -> Get(Some("1"))"#), "{text}");
}

#[test]
fn stale_read_explanation_is_structured() {
    let mut h = KvHistory::new();
    op(&mut h, 1, put("x", "1"), 0, 10, PUT_OK);
    op(&mut h, 1, put("x", "2"), 20, 30, PUT_OK);
    let stale = op(&mut h, 3, get("x"), 40, 50, got(Some("1")));
    op(&mut h, 3, get("x"), 60, 70, got(Some("2")));
    let Verdict::NotLinearizable { explanation, .. } = check_kv(&h, &CheckConfig::default()) else {
        panic!("expected not linearizable");
    };
    assert_eq!(explanation.failing_op, stale);
    assert_eq!(explanation.client_id, 3);
    assert_eq!(explanation.prefix_end_ns, 50);
    assert_eq!(explanation.prefix_ops, vec![OpId(0), OpId(1), OpId(2)]);
    assert_eq!(
        explanation.candidate_states,
        vec![r#"{"x": "2"}"#.to_string()]
    );
}

#[test]
fn lost_acknowledged_write_is_rejected() {
    // The put of 2 was acknowledged, yet every later, non-overlapping read sees 1: the
    // write was lost (say, by a leader that acked before it was committed).
    let mut h = KvHistory::new();
    op(&mut h, 1, put("x", "1"), 0, 10, PUT_OK);
    op(&mut h, 2, put("x", "2"), 20, 30, PUT_OK);
    let first_read = op(&mut h, 3, get("x"), 40, 50, got(Some("1")));
    op(&mut h, 1, get("x"), 60, 70, got(Some("1")));
    op(&mut h, 3, get("x"), 80, 90, got(Some("1")));
    assert_rejected(&h, "x", first_read);
}

#[test]
fn cas_against_a_value_never_current_is_rejected() {
    // The CAS expected 2, but 2 was only written after the CAS had returned.
    let mut h = KvHistory::new();
    op(&mut h, 1, put("x", "1"), 0, 10, PUT_OK);
    let bad_cas = op(&mut h, 2, cas("x", Some("2"), "3"), 20, 30, cas_ok(true));
    op(&mut h, 1, put("x", "2"), 40, 50, PUT_OK);
    assert_rejected(&h, "x", bad_cas);
}

#[test]
fn cas_expecting_absence_while_present_is_rejected() {
    let mut h = KvHistory::new();
    op(&mut h, 1, put("x", "1"), 0, 10, PUT_OK);
    let bad_cas = op(&mut h, 2, cas("x", None, "2"), 20, 30, cas_ok(true));
    assert_rejected(&h, "x", bad_cas);
}

#[test]
fn two_cas_from_the_same_value_cannot_both_succeed() {
    let mut h = KvHistory::new();
    op(&mut h, 1, put("x", "0"), 0, 10, PUT_OK);
    let a = op(&mut h, 2, cas("x", Some("0"), "a"), 20, 40, cas_ok(true));
    let b = op(&mut h, 3, cas("x", Some("0"), "b"), 20, 40, cas_ok(true));
    let verdict = check_kv(&h, &CheckConfig::default());
    let Verdict::NotLinearizable { explanation, .. } = verdict else {
        panic!("expected not linearizable, got {verdict:#?}");
    };
    assert!([a, b].contains(&explanation.failing_op));
}

#[test]
fn read_of_a_value_never_written_is_rejected() {
    let mut h = KvHistory::new();
    op(&mut h, 1, put("x", "1"), 0, 10, PUT_OK);
    lost(&mut h, 2, put("x", "2"), 15);
    let bad_read = op(&mut h, 3, get("x"), 20, 30, got(Some("zzz")));
    let text = assert_rejected(&h, "x", bad_read);
    println!("{text}");
}

#[test]
fn double_delete_is_rejected() {
    let mut h = KvHistory::new();
    op(&mut h, 1, put("x", "1"), 0, 10, PUT_OK);
    op(&mut h, 2, delete("x"), 20, 30, deleted(true));
    let second = op(&mut h, 3, delete("x"), 40, 50, deleted(true));
    assert_rejected(&h, "x", second);
}

#[test]
fn violation_is_reported_on_its_key_only() {
    let mut h = KvHistory::new();
    op(&mut h, 1, put("a", "1"), 0, 10, PUT_OK);
    op(&mut h, 1, get("a"), 20, 30, got(Some("1")));
    op(&mut h, 2, put("b", "1"), 0, 10, PUT_OK);
    let bad = op(&mut h, 2, get("b"), 20, 30, got(None));
    assert_rejected(&h, "b", bad);
}

#[test]
fn push_builds_the_same_history_as_the_builder() {
    let mut pushed = KvHistory::new();
    let completed = |output, at_ns| Completion::Returned { output, at_ns };
    pushed
        .push(operation(1, put("x", "1"), 0, completed(PUT_OK, 10)))
        .unwrap();
    pushed
        .push(operation(2, put("x", "2"), 20, Completion::Indeterminate))
        .unwrap();
    let mut built = KvHistory::new();
    op(&mut built, 1, put("x", "1"), 0, 10, PUT_OK);
    lost(&mut built, 2, put("x", "2"), 20);
    assert_eq!(pushed, built);
}

/// Many concurrent writes and a read of a value none of them wrote: deciding it means
/// exploring every subset of the writes.
fn hard_broken_history(writes: u64) -> KvHistory {
    let mut h = KvHistory::new();
    for client in 0..writes {
        op(
            &mut h,
            client,
            put("x", &client.to_string()),
            0,
            1000,
            PUT_OK,
        );
    }
    op(
        &mut h,
        writes,
        get("x"),
        0,
        1000,
        got(Some("never written")),
    );
    h
}

#[test]
fn exhausting_the_state_bound_answers_unknown() {
    let history = hard_broken_history(10);
    let config = CheckConfig {
        states_explored_max: 100,
        ..CheckConfig::default()
    };
    let verdict = check_kv(&history, &config);
    assert!(
        matches!(
            verdict,
            Verdict::Unknown {
                reason: UnknownReason::StatesExploredMax { .. }
            }
        ),
        "{verdict:#?}"
    );
    // With room to finish, the same history is rejected.
    assert!(check_kv(&history, &CheckConfig::default()).is_not_linearizable());
}

#[test]
fn exhausting_the_memory_bound_answers_unknown() {
    let config = CheckConfig {
        cache_bytes_max: 4096,
        ..CheckConfig::default()
    };
    let verdict = check_kv(&hard_broken_history(10), &config);
    assert!(
        matches!(
            verdict,
            Verdict::Unknown {
                reason: UnknownReason::CacheBytesMax { .. }
            }
        ),
        "{verdict:#?}"
    );
}

#[test]
fn exhausting_the_time_budget_answers_unknown() {
    let config = CheckConfig {
        time_budget_ms: 0,
        ..CheckConfig::default()
    };
    let verdict = check_kv(&hard_broken_history(16), &config);
    let Verdict::Unknown { reason } = verdict else {
        panic!("expected unknown, got {verdict:#?}");
    };
    assert!(
        matches!(reason, UnknownReason::TimeBudgetExceeded { .. }),
        "{reason}"
    );
    assert!(reason.to_string().contains("time budget"), "{reason}");
}

#[test]
fn a_violation_on_another_key_outranks_an_undecided_key() {
    let mut history = hard_broken_history(10);
    op(&mut history, 99, put("y", "1"), 0, 10, PUT_OK);
    let bad = op(&mut history, 99, get("y"), 20, 30, got(None));
    let config = CheckConfig {
        states_explored_max: 100,
        ..CheckConfig::default()
    };
    let Verdict::NotLinearizable { key, explanation } = check_kv(&history, &config) else {
        panic!("expected not linearizable");
    };
    assert_eq!((key.as_slice(), explanation.failing_op), (&b"y"[..], bad));
}
