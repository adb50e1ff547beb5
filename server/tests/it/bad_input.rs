//! Bad input on the ingest stream gets a clear gRPC status and changes nothing (DESIGN.md principle 7),
//! and the server that refused it keeps serving good agents.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use sockfleet_proto::v1;
use sqlx::postgres::PgPool;
use tonic::{Code, Status};

use crate::support::database::TestDatabase;
use crate::support::grpc::{
    AgentStream, hello, hello_message, plain_report, refusal, report_message, rows, stored_rows,
};
use crate::support::process::ServerProcess;

/// Asserts that the ingest tables are empty, naming the case that might have written to them.
async fn assert_nothing_stored(pool: &PgPool, case: &str) {
    assert_eq!(
        stored_rows(pool).await,
        rows(0, 0, 0, 0),
        "the database changed after {case}"
    );
}

/// Asserts the status code, and that the message contains every one of `needles`.
fn assert_status(status: &Status, code: Code, needles: &[&str], case: &str) {
    assert_eq!(status.code(), code, "{case}: wrong code in {status:?}");
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "{case}: the message {:?} does not mention {needle:?}",
            status.message()
        );
    }
}

/// Opens a stream with a valid hello for `host`, checks the welcome, sends `bad` and returns the status
/// the server ends the stream with.
async fn refusal_after_welcome(url: &str, host: &str, bad: v1::AgentMessage) -> Status {
    let (mut stream, welcome) = AgentStream::open(url, hello(host, "bad-run"))
        .await
        .unwrap_or_else(|status| panic!("a valid hello was refused: {status:?}"));
    assert_eq!(welcome.committed_sequence, 0);
    assert_eq!(welcome.protocol_version, v1::PROTOCOL_VERSION);
    stream.send(bad).await;
    stream.refusal().await
}

/// A report whose IPv4 TIME_WAIT count no host could hold.
///
/// `u64::MAX` is also what an agent produces that puts a negative `int64` (-1) into this `uint64` field:
/// both encode as the same ten-byte varint (`ff ff ff ff ff ff ff ff ff 01`), so this case covers a
/// signed/unsigned mix-up on the agent side too.
fn absurd_count_report(sequence: u64) -> v1::Report {
    let mut report = plain_report(sequence, Utc::now());
    report.ipv4.as_mut().expect("ipv4 counts").time_wait = u64::MAX;
    report
}

#[tokio::test]
async fn bad_streams_are_refused_clearly_and_change_nothing() {
    let database = TestDatabase::create().await;
    let server = ServerProcess::start(&database.url, "127.0.0.1:0", &[]);
    let url = server.url();
    let pool = database.pool().await;
    assert_nothing_stored(&pool, "starting the server").await;

    // Refused before any welcome.
    let case = "a report before any hello";
    let status = refusal(&url, vec![report_message(plain_report(1, Utc::now()))]).await;
    assert_status(&status, Code::FailedPrecondition, &["hello"], case);
    assert_nothing_stored(&pool, case).await;

    let case = "an unknown protocol version";
    let mut future_agent = hello("bad-host", "bad-run");
    future_agent.protocol_version = 99;
    let status = refusal(&url, vec![hello_message(future_agent)]).await;
    assert_status(
        &status,
        Code::FailedPrecondition,
        &["99", "version 1"],
        case,
    );
    assert_nothing_stored(&pool, case).await;

    let case = "a hello with an empty host_id";
    let mut nameless = hello("bad-host", "bad-run");
    nameless.host_id = String::new();
    let status = refusal(&url, vec![hello_message(nameless)]).await;
    assert_status(&status, Code::InvalidArgument, &["hello.host_id"], case);
    assert_nothing_stored(&pool, case).await;

    let case = "a hello with a host_id containing a space";
    let status = refusal(&url, vec![hello_message(hello("bad host", "bad-run"))]).await;
    assert_status(&status, Code::InvalidArgument, &["hello.host_id"], case);
    assert_nothing_stored(&pool, case).await;

    let case = "a hello with a bad label key";
    let mut badly_labelled = hello("bad-host", "bad-run");
    badly_labelled
        .labels
        .insert("bad key".to_owned(), "x".to_owned());
    let status = refusal(&url, vec![hello_message(badly_labelled)]).await;
    assert_status(
        &status,
        Code::InvalidArgument,
        &["hello.labels", "bad key"],
        case,
    );
    assert_nothing_stored(&pool, case).await;

    let case = "a hello with an interval of 1 ms";
    let mut hasty = hello("bad-host", "bad-run");
    hasty.interval_ms = 1;
    let status = refusal(&url, vec![hello_message(hasty)]).await;
    assert_status(&status, Code::InvalidArgument, &["hello.interval_ms"], case);
    assert_nothing_stored(&pool, case).await;

    // Refused after a valid hello and its welcome.
    let case = "an absurd TIME_WAIT count";
    let status =
        refusal_after_welcome(&url, "bad-host", report_message(absurd_count_report(7))).await;
    assert_status(
        &status,
        Code::InvalidArgument,
        &["report.ipv4.time_wait"],
        case,
    );
    let refused = status
        .metadata()
        .get(v1::REFUSED_SEQUENCE_HEADER)
        .unwrap_or_else(|| {
            panic!(
                "{case}: no {} metadata in {status:?}",
                v1::REFUSED_SEQUENCE_HEADER
            )
        });
    assert_eq!(refused.to_str().expect("ASCII metadata"), "7", "{case}");
    assert_nothing_stored(&pool, case).await;

    let case = "a collection time an hour ahead";
    let mut ahead = plain_report(1, Utc::now() + TimeDelta::hours(1));
    ahead.sequence = 3;
    let status = refusal_after_welcome(&url, "bad-host", report_message(ahead)).await;
    assert_status(
        &status,
        Code::InvalidArgument,
        &["report.collected_at"],
        case,
    );
    let refused = status
        .metadata()
        .get(v1::REFUSED_SEQUENCE_HEADER)
        .map(|value| value.to_str().unwrap());
    assert_eq!(refused, Some("3"), "{case}");
    assert_nothing_stored(&pool, case).await;

    let case = "a report without collection time";
    let mut timeless = plain_report(1, Utc::now());
    timeless.collected_at = None;
    let status = refusal_after_welcome(&url, "bad-host", report_message(timeless)).await;
    assert_status(
        &status,
        Code::InvalidArgument,
        &["report.collected_at"],
        case,
    );
    assert_nothing_stored(&pool, case).await;

    let case = "a report with sequence 0";
    let status = refusal_after_welcome(
        &url,
        "bad-host",
        report_message(plain_report(0, Utc::now())),
    )
    .await;
    assert_status(&status, Code::InvalidArgument, &["report.sequence"], case);
    assert_nothing_stored(&pool, case).await;

    let case = "a report without IPv6 counts";
    let mut half = plain_report(1, Utc::now());
    half.ipv6 = None;
    let status = refusal_after_welcome(&url, "bad-host", report_message(half)).await;
    assert_status(&status, Code::InvalidArgument, &["report.ipv6"], case);
    assert_nothing_stored(&pool, case).await;

    let case = "a message over 4 MiB";
    let mut oversized = plain_report(1, Utc::now());
    oversized.sysctls.push(v1::Sysctl {
        name: "net.ipv4.ip_local_reserved_ports".to_owned(),
        value: Some("1,".repeat(2 * 1024 * 1024 + 1)),
    });
    let status = refusal_after_welcome(&url, "bad-host", report_message(oversized)).await;
    assert_status(
        &status,
        Code::ResourceExhausted,
        &["too large", "4194304"],
        case,
    );
    assert_nothing_stored(&pool, case).await;

    let case = "a second hello on one stream";
    let status = refusal_after_welcome(
        &url,
        "bad-host",
        hello_message(hello("bad-host", "bad-run")),
    )
    .await;
    assert_status(&status, Code::FailedPrecondition, &["hello"], case);
    assert_nothing_stored(&pool, case).await;

    // The same server still serves a good agent.
    let now = Utc::now();
    let good = hello("good-host", "good-run-1");
    let (mut stream, welcome) = AgentStream::open(&url, good.clone())
        .await
        .unwrap_or_else(|status| panic!("a valid hello was refused: {status:?}"));
    assert_eq!(welcome.committed_sequence, 0);
    let mut first = plain_report(1, now - TimeDelta::seconds(2));
    first.sysctls = vec![
        v1::Sysctl {
            name: "net.ipv4.tcp_fin_timeout".to_owned(),
            value: Some("60".to_owned()),
        },
        v1::Sysctl {
            name: "net.ipv4.tcp_tw_recycle".to_owned(),
            value: None,
        },
    ];
    let mut acks = Vec::new();
    for report in [
        first,
        plain_report(2, now - TimeDelta::seconds(1)),
        plain_report(3, now),
    ] {
        let sequence = report.sequence;
        stream.send_report(report).await;
        // Awaiting each ack before the next report: every report is acknowledged on its own.
        acks.extend(
            stream
                .acks_until(sequence)
                .await
                .expect("a good report was refused"),
        );
    }
    assert_eq!(acks, [1, 2, 3]);
    stream.finish().await;
    assert_eq!(stored_rows(&pool).await, rows(1, 1, 3, 2));

    // The same run reconnects and sends reports 2 and 3 again, as after a lost ack: the welcome says
    // they are committed, and resending them is acknowledged without storing anything twice.
    let (mut stream, welcome) = AgentStream::open(&url, good.clone())
        .await
        .unwrap_or_else(|status| panic!("a valid hello was refused: {status:?}"));
    assert_eq!(welcome.committed_sequence, 3);
    let mut changed_resend = plain_report(2, now - TimeDelta::seconds(1));
    changed_resend.ipv4.as_mut().unwrap().established = 999;
    stream.send_report(changed_resend).await;
    stream.send_report(plain_report(3, now)).await;
    let acks = stream
        .acks_until(3)
        .await
        .expect("resent reports were refused");
    assert_eq!(
        acks.last(),
        Some(&3),
        "acks of the resent reports: {acks:?}"
    );
    assert_eq!(
        stored_rows(&pool).await,
        rows(1, 1, 3, 2),
        "a resent report created rows"
    );
    let established: i32 =
        sqlx::query_scalar("SELECT v4_established FROM reports WHERE sequence = 2")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(established, 12, "a resent report overwrote the stored one");

    // The stream goes on with new reports after the resends.
    stream.send_report(plain_report(4, Utc::now())).await;
    assert_eq!(
        stream.acks_until(4).await.expect("report 4 refused").last(),
        Some(&4)
    );
    stream.finish().await;
    assert_eq!(stored_rows(&pool).await, rows(1, 1, 4, 2));

    // Reports before a refused one on the same stream are acknowledged and stored; the refused one and
    // everything after it are not.
    let (mut stream, welcome) = AgentStream::open(&url, hello("good-host", "good-run-2"))
        .await
        .unwrap_or_else(|status| panic!("a valid hello was refused: {status:?}"));
    assert_eq!(
        welcome.committed_sequence, 0,
        "a new run starts from nothing"
    );
    stream.send_report(plain_report(1, Utc::now())).await;
    stream.send_report(absurd_count_report(2)).await;
    stream.send_report(plain_report(3, Utc::now())).await;
    let mut acks = Vec::new();
    let status = loop {
        match stream.next().await {
            Ok(Some(v1::server_message::Body::Ack(ack))) => acks.push(ack.sequence),
            Ok(other) => panic!("expected acks, then a refusal; got {other:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(
        acks,
        [1],
        "only the report before the refused one is acknowledged"
    );
    assert_status(
        &status,
        Code::InvalidArgument,
        &["report 2", "report.ipv4.time_wait"],
        "report 2 of 3",
    );
    let refused = status
        .metadata()
        .get(v1::REFUSED_SEQUENCE_HEADER)
        .map(|value| value.to_str().unwrap());
    assert_eq!(refused, Some("2"));
    assert_eq!(stored_rows(&pool).await, rows(1, 2, 5, 2));

    drop(stream);
    // Stopping blocks its thread; off the runtime, so the client side of open connections keeps
    // answering the server's graceful shutdown.
    let log = tokio::task::spawn_blocking(move || server.stop())
        .await
        .expect("server stopped");
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streams_do_not_disturb_a_good_stream() {
    const GOOD_REPORTS: u64 = 30;
    let database = TestDatabase::create().await;
    let server = ServerProcess::start(&database.url, "127.0.0.1:0", &[]);
    let url = server.url();
    let pool = database.pool().await;

    let (mut good, welcome) = AgentStream::open(&url, hello("steady-host", "steady-run"))
        .await
        .unwrap_or_else(|status| panic!("a valid hello was refused: {status:?}"));
    assert_eq!(welcome.committed_sequence, 0);

    let good_done = AtomicBool::new(false);
    let good_agent = async {
        let start = Utc::now() - TimeDelta::seconds(i64::try_from(GOOD_REPORTS).unwrap());
        let mut acks = Vec::new();
        for sequence in 1..=GOOD_REPORTS {
            let at = start + TimeDelta::seconds(i64::try_from(sequence).unwrap());
            good.send_report(plain_report(sequence, at)).await;
            acks.extend(
                good.acks_until(sequence)
                    .await
                    .expect("a good report was refused"),
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        good_done.store(true, Ordering::SeqCst);
        acks
    };
    // Bad agents come and go for as long as the good one reports (and at least three rounds).
    let bad_agents = async {
        let mut round = 0;
        while round < 3 || !good_done.load(Ordering::SeqCst) {
            round += 1;
            let status = refusal_after_welcome(
                &url,
                "noisy-host",
                report_message(absurd_count_report(round + 1)),
            )
            .await;
            assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
            let status = refusal(&url, vec![report_message(plain_report(1, Utc::now()))]).await;
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            let status =
                refusal_after_welcome(&url, "noisy-host", hello_message(hello("noisy-host", "x")))
                    .await;
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            let mut oversized = plain_report(1, Utc::now());
            oversized.sysctls.push(v1::Sysctl {
                name: "net.ipv4.ip_local_reserved_ports".to_owned(),
                value: Some("x".repeat(5 * 1024 * 1024)),
            });
            let status = refusal_after_welcome(&url, "noisy-host", report_message(oversized)).await;
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            // An empty first message (no hello) is refused like a report first.
            let status = refusal(&url, vec![v1::AgentMessage { body: None }]).await;
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        }
    };
    let (acks, ()) = tokio::join!(good_agent, bad_agents);
    assert_eq!(acks, (1..=GOOD_REPORTS).collect::<Vec<_>>());
    good.finish().await;

    assert_eq!(
        stored_rows(&pool).await,
        rows(1, 1, i64::try_from(GOOD_REPORTS).unwrap(), 0)
    );
    let host: String = sqlx::query_scalar("SELECT host_id FROM hosts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(host, "steady-host");
    drop(server);
}

/// An agent that froze with its stream open (the host hangs, or the network drops every packet from
/// it) answers nothing, not even HTTP/2 PINGs. It must not keep the server from stopping: the server
/// gets 20 s from SIGTERM, as `ServerProcess::stop` allows.
#[tokio::test]
async fn a_frozen_agent_does_not_keep_the_server_from_stopping() {
    let database = TestDatabase::create().await;
    let server = ServerProcess::start(&database.url, "127.0.0.1:0", &[]);
    let url = server.url();
    let (welcomed, welcome) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let frozen_agent = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("agent runtime");
        let stream = runtime.block_on(async {
            let (mut stream, welcome) = AgentStream::open(&url, hello("frozen-host", "frozen-run"))
                .await
                .unwrap_or_else(|status| panic!("a valid hello was refused: {status:?}"));
            stream.send_report(plain_report(1, Utc::now())).await;
            stream.acks_until(1).await.expect("report 1 refused");
            (stream, welcome)
        });
        welcomed.send(()).expect("test waiting");
        // Frozen: nothing drives this agent's connection until the test is over.
        let _ = released.recv();
        drop(stream);
    });
    welcome
        .recv_timeout(Duration::from_secs(30))
        .expect("the agent was welcomed and its report acknowledged");

    let started = std::time::Instant::now();
    let stopped = tokio::task::spawn_blocking(move || server.stop()).await;
    let _ = release.send(());
    frozen_agent.join().expect("agent thread");
    assert!(
        stopped.is_ok(),
        "the server did not stop within 20 s of SIGTERM (after {:?}) while an agent was frozen",
        started.elapsed()
    );
}

/// Opens a stream with a valid hello, sends `report` and returns what the server answered it with:
/// `Err` with the refusal, or `Ok` with the sequence it acknowledged.
async fn answer_to(url: &str, host: &str, report: v1::Report) -> Result<u64, Status> {
    let (mut stream, _) = AgentStream::open(url, hello(host, "edge-run"))
        .await
        .unwrap_or_else(|status| panic!("a valid hello was refused: {status:?}"));
    stream.send_report(report).await;
    match stream.next().await? {
        Some(v1::server_message::Body::Ack(ack)) => Ok(ack.sequence),
        other => panic!("expected an ack or a refusal, got {other:?}"),
    }
}

/// The database keeps sequences as BIGINT. A sequence above `i64::MAX` (what an agent that writes -1
/// into the field sends: u64::MAX) cannot be stored as sent; two such reports would collapse into one
/// row while both are acknowledged, so an acknowledged report would be lost. It must be refused.
#[tokio::test]
async fn sequences_beyond_the_database_range_are_refused() {
    let database = TestDatabase::create().await;
    let server = ServerProcess::start(&database.url, "127.0.0.1:0", &[]);
    let url = server.url();
    let pool = database.pool().await;
    for sequence in [u64::MAX, 1 << 63] {
        let mut report = plain_report(1, Utc::now());
        report.sequence = sequence;
        let answer = answer_to(&url, "edge-host", report).await;
        let status = answer.err().unwrap_or_else(|| {
            panic!("report {sequence} was acknowledged, though BIGINT cannot hold its sequence")
        });
        assert_status(
            &status,
            Code::InvalidArgument,
            &["report.sequence"],
            "a sequence beyond i64::MAX",
        );
        let refused = status
            .metadata()
            .get(v1::REFUSED_SEQUENCE_HEADER)
            .map(|value| value.to_str().unwrap().to_owned());
        assert_eq!(refused, Some(sequence.to_string()));
        assert_nothing_stored(&pool, "a sequence beyond i64::MAX").await;
    }
}

/// A protobuf `Timestamp` has `nanos` in 0..=999_999_999. chrono reads 1e9..2e9 as a leap second (at
/// second 59), so the range must be checked at the edge, not left to chrono.
#[tokio::test]
async fn timestamp_nanos_out_of_range_are_refused() {
    let database = TestDatabase::create().await;
    let server = ServerProcess::start(&database.url, "127.0.0.1:0", &[]);
    let url = server.url();
    let pool = database.pool().await;
    // A recent second 59 of a minute, where chrono accepts leap-second nanos.
    let second_59 = (Utc::now().timestamp() - 120) / 60 * 60 + 59;
    for nanos in [1_000_000_000, 1_500_000_000, -1] {
        let mut report = plain_report(1, Utc::now());
        report.collected_at = Some(prost_types::Timestamp {
            seconds: second_59,
            nanos,
        });
        let answer = answer_to(&url, "edge-host", report).await;
        let status = answer
            .err()
            .unwrap_or_else(|| panic!("a timestamp with nanos = {nanos} was accepted"));
        assert_status(
            &status,
            Code::InvalidArgument,
            &["report.collected_at"],
            "nanos out of range",
        );
        assert_nothing_stored(&pool, "nanos out of range").await;
    }
}
