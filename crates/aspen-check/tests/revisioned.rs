//! The revision-carrying model, checked over whole histories: revisions order writes across
//! keys, which per-key checks cannot see.

#![allow(
    clippy::expect_used,
    reason = "a test: a failed expect is a failed test"
)]

mod common;

use aspen_check::{
    CheckConfig, History, KvInput, KvOutput, OpId, RevisionedKvModel, RevisionedKvOutput,
    RevisionedKvState, Verdict, check, check_from,
};
use common::{get, put};

type RevHistory = History<KvInput, RevisionedKvOutput>;

fn rev(output: KvOutput, revision: Option<u64>) -> RevisionedKvOutput {
    RevisionedKvOutput { output, revision }
}

fn op(
    h: &mut RevHistory,
    client_id: u64,
    input: KvInput,
    span_ns: (u64, u64),
    output: RevisionedKvOutput,
) -> OpId {
    let id = h.invoke(client_id, input, span_ns.0);
    h.complete(id, output, span_ns.1).unwrap();
    id
}

#[test]
fn concurrent_puts_on_two_keys_take_consecutive_revisions() {
    for (a_rev, b_rev) in [(2, 3), (3, 2)] {
        let mut h = RevHistory::new();
        op(
            &mut h,
            1,
            put("a", "1"),
            (0, 100),
            rev(KvOutput::Put, Some(a_rev)),
        );
        op(
            &mut h,
            2,
            put("b", "1"),
            (0, 100),
            rev(KvOutput::Put, Some(b_rev)),
        );
        let value = Some(b"1".to_vec());
        op(
            &mut h,
            3,
            get("a"),
            (200, 210),
            rev(
                KvOutput::Get {
                    value: value.clone(),
                },
                None,
            ),
        );
        op(
            &mut h,
            3,
            get("b"),
            (220, 230),
            rev(KvOutput::Get { value }, Some(3)),
        );
        let verdict = check::<RevisionedKvModel>(&h, &CheckConfig::default());
        assert!(verdict.is_linearizable(), "{verdict:#?}");
    }
}

#[test]
fn revisions_that_fit_an_order_are_accepted() {
    let mut h = RevHistory::new();
    op(
        &mut h,
        1,
        put("a", "1"),
        (0, 100),
        rev(KvOutput::Put, Some(3)),
    );
    op(
        &mut h,
        2,
        put("b", "1"),
        (0, 100),
        rev(KvOutput::Put, Some(2)),
    );
    let value = Some(b"1".to_vec());
    op(
        &mut h,
        3,
        get("b"),
        (50, 60),
        rev(
            KvOutput::Get {
                value: value.clone(),
            },
            Some(2),
        ),
    );
    op(
        &mut h,
        3,
        get("a"),
        (200, 210),
        rev(KvOutput::Get { value }, Some(3)),
    );
    let verdict = check::<RevisionedKvModel>(&h, &CheckConfig::default());
    assert!(verdict.is_linearizable(), "{verdict:#?}");
}

#[test]
fn two_writes_acked_with_one_revision_are_rejected() {
    // Per key each put is fine; only the shared revision exposes that one of them was not
    // really applied in order.
    let mut h = RevHistory::new();
    op(
        &mut h,
        1,
        put("a", "1"),
        (0, 10),
        rev(KvOutput::Put, Some(2)),
    );
    let second = op(
        &mut h,
        2,
        put("b", "1"),
        (20, 30),
        rev(KvOutput::Put, Some(2)),
    );
    let Verdict::NotLinearizable { explanation, .. } =
        check::<RevisionedKvModel>(&h, &CheckConfig::default())
    else {
        panic!("expected not linearizable");
    };
    assert_eq!(explanation.failing_op, second);
    assert!(explanation.text.contains("@rev 2"), "{explanation}");
}

#[test]
fn a_read_behind_an_acked_revision_is_rejected() {
    let mut h = RevHistory::new();
    op(
        &mut h,
        1,
        put("a", "1"),
        (0, 10),
        rev(KvOutput::Put, Some(2)),
    );
    op(
        &mut h,
        1,
        put("b", "1"),
        (20, 30),
        rev(KvOutput::Put, Some(3)),
    );
    let value = Some(b"1".to_vec());
    let stale = op(
        &mut h,
        2,
        get("a"),
        (40, 50),
        rev(KvOutput::Get { value }, Some(2)),
    );
    let Verdict::NotLinearizable { explanation, .. } =
        check::<RevisionedKvModel>(&h, &CheckConfig::default())
    else {
        panic!("expected not linearizable");
    };
    assert_eq!(explanation.failing_op, stale);
}

#[test]
fn check_from_starts_at_a_given_revision() {
    let mut h = RevHistory::new();
    op(
        &mut h,
        1,
        put("a", "1"),
        (0, 10),
        rev(KvOutput::Put, Some(42)),
    );
    let init = RevisionedKvState {
        revision: 41,
        ..RevisionedKvState::default()
    };
    assert!(check_from::<RevisionedKvModel>(&h, init, &CheckConfig::default()).is_linearizable());
    assert!(check::<RevisionedKvModel>(&h, &CheckConfig::default()).is_not_linearizable());
}
