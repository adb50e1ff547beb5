//! Reading the kernel's TCP counters and gauges that the alert rules need, from
//! `/proc/thread-self/net/{netstat,snmp,sockstat}`.
//!
//! The files are read through `/proc/thread-self`, so a collector thread that entered another
//! network namespace with `setns` sees that namespace's counters (`/proc/net` follows the process's
//! main thread instead). The `netstat` and `snmp` counters only ever grow (the server takes their
//! rates); the `sockstat` figures are gauges, some of them host-wide in the kernel.
//!
//! `netstat` and `snmp` hold pairs of lines: a header naming the counters (`TcpExt: SyncookiesSent
//! ...`) followed by a line of values with the same prefix (`TcpExt: 0 ...`), matched by position.
//! The set of counters differs between kernel versions, so a counter this kernel lacks stays 0 and
//! counters sockfleet does not know are skipped.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;

use sockfleet_domain::KernelCounters;

use super::CollectError;

/// The extended TCP counters (`TcpExt:`) of the calling thread's network namespace.
const NETSTAT: &str = "/proc/thread-self/net/netstat";
/// The RFC 4022 TCP counters (`Tcp:`) of the calling thread's network namespace.
const SNMP: &str = "/proc/thread-self/net/snmp";
/// The socket gauges (`TCP:`): the calling thread's network namespace's, or the host's (see the fields).
const SOCKSTAT: &str = "/proc/thread-self/net/sockstat";

/// Reads the TCP counters and gauges of the calling thread's network namespace (orphans, `alloc`
/// and `mem` are host-wide in the kernel); called once per collection by the collector thread.
///
/// A counter this kernel does not report is 0. Fails when a file cannot be read or is not in the
/// format described in the module documentation.
pub fn read_kernel_counters() -> Result<KernelCounters, CollectError> {
    let mut counters = KernelCounters::default();
    let mut text = String::with_capacity(8 * 1024);
    let files: [(&str, Parser); 3] = [
        (NETSTAT, parse_netstat),
        (SNMP, parse_snmp),
        (SOCKSTAT, parse_sockstat),
    ];
    for (path, parse) in files {
        text.clear();
        File::open(path)
            .and_then(|mut file| file.read_to_string(&mut text))
            .map_err(|source| CollectError::Proc {
                path: PathBuf::from(path),
                source,
            })?;
        parse(&text, &mut counters).map_err(|Malformed(line)| CollectError::ProcMalformed {
            path: PathBuf::from(path),
            line,
        })?;
    }
    Ok(counters)
}

/// Reads sockstat's `tw` alone (the namespace's time-wait sockets, orphaned FIN_WAIT2 minisockets
/// included) from `/proc/thread-self/net/sockstat`, into `text` (reused, so a steady caller allocates
/// nothing). For the breakdown collector's cheap path, which takes the TIME_WAIT total from it.
pub(crate) fn read_sockstat_time_wait(text: &mut String) -> Result<u64, CollectError> {
    text.clear();
    File::open(SOCKSTAT)
        .and_then(|mut file| file.read_to_string(text))
        .map_err(|source| CollectError::Proc {
            path: PathBuf::from(SOCKSTAT),
            source,
        })?;
    let mut counters = KernelCounters::default();
    parse_sockstat(text, &mut counters).map_err(|Malformed(line)| CollectError::ProcMalformed {
        path: PathBuf::from(SOCKSTAT),
        line,
    })?;
    Ok(counters.time_wait_sockstat)
}

/// Why a file's text was rejected: the offending line or a description of it, for
/// [`CollectError::ProcMalformed`].
#[derive(Debug, PartialEq, Eq)]
struct Malformed(String);

/// Parses the text of one file into the fields it provides.
type Parser = fn(&str, &mut KernelCounters) -> Result<(), Malformed>;

/// Picks the field a counter name fills, or `None` for counters sockfleet does not read.
type FieldOf = for<'a> fn(&'a mut KernelCounters, &str) -> Option<&'a mut u64>;

/// Parses the text of `/proc/net/netstat` (its `TcpExt:` lines).
fn parse_netstat(text: &str, counters: &mut KernelCounters) -> Result<(), Malformed> {
    parse_table(text, "TcpExt:", counters, |counters, name| match name {
        "TCPTimeWaitOverflow" => Some(&mut counters.time_wait_overflow),
        "ListenOverflows" => Some(&mut counters.listen_overflows),
        "ListenDrops" => Some(&mut counters.listen_drops),
        "TCPAbortOnMemory" => Some(&mut counters.abort_on_memory),
        _ => None,
    })
}

/// Parses the text of `/proc/net/snmp` (its `Tcp:` lines).
fn parse_snmp(text: &str, counters: &mut KernelCounters) -> Result<(), Malformed> {
    parse_table(text, "Tcp:", counters, |counters, name| match name {
        "ActiveOpens" => Some(&mut counters.active_opens),
        "PassiveOpens" => Some(&mut counters.passive_opens),
        "AttemptFails" => Some(&mut counters.attempt_fails),
        "EstabResets" => Some(&mut counters.estab_resets),
        "OutRsts" => Some(&mut counters.out_resets),
        "RetransSegs" => Some(&mut counters.retrans_segs),
        "InErrs" => Some(&mut counters.in_errs),
        _ => None,
    })
}

/// Parses the text of `/proc/net/sockstat` (its `TCP:` line of name/value pairs).
fn parse_sockstat(text: &str, counters: &mut KernelCounters) -> Result<(), Malformed> {
    const PREFIX: &str = "TCP:";
    let line =
        find_line(text.lines(), PREFIX).ok_or_else(|| Malformed(format!("no {PREFIX} line")))?;
    let mut tokens = line.split_whitespace().skip(1);
    if tokens.clone().count() % 2 != 0 {
        return Err(Malformed(line.to_owned()));
    }
    let field_of: FieldOf = |counters, name| match name {
        "inuse" => Some(&mut counters.in_use),
        "orphan" => Some(&mut counters.orphans),
        "tw" => Some(&mut counters.time_wait_sockstat),
        "alloc" => Some(&mut counters.allocated),
        "mem" => Some(&mut counters.memory_pages),
        _ => None,
    };
    while let (Some(name), Some(value)) = (tokens.next(), tokens.next()) {
        store(counters, field_of, PREFIX, name, value)?;
    }
    Ok(())
}

/// Parses the header line starting with `prefix` and the value line after it, filling the fields
/// `field_of` picks. Nothing is stored unless the two lines have as many entries.
fn parse_table(
    text: &str,
    prefix: &str,
    counters: &mut KernelCounters,
    field_of: FieldOf,
) -> Result<(), Malformed> {
    let mut lines = text.lines();
    let header = find_line(&mut lines, prefix)
        .ok_or_else(|| Malformed(format!("no {prefix} header line")))?;
    let values = lines
        .next()
        .filter(|line| line.split_whitespace().next() == Some(prefix))
        .ok_or_else(|| Malformed(format!("no {prefix} value line after the header")))?;
    let names = header.split_whitespace().count();
    let numbers = values.split_whitespace().count();
    if names != numbers {
        return Err(Malformed(format!(
            "{prefix} header has {} names but the value line has {} values",
            names - 1,
            numbers - 1
        )));
    }
    let pairs = header.split_whitespace().zip(values.split_whitespace());
    for (name, value) in pairs.skip(1) {
        store(counters, field_of, prefix, name, value)?;
    }
    Ok(())
}

/// The first line whose first word is `prefix` (`Tcp:` must not match `TcpExt:`).
fn find_line<'a>(lines: impl IntoIterator<Item = &'a str>, prefix: &str) -> Option<&'a str> {
    lines
        .into_iter()
        .find(|line| line.split_whitespace().next() == Some(prefix))
}

/// Stores one named value in the field `field_of` picks for it. A value sockfleet reads must be a
/// non-negative integer; any other value must still be an integer (some, like `Tcp: MaxConn`, are
/// -1), or the lines are not what they seem.
fn store(
    counters: &mut KernelCounters,
    field_of: FieldOf,
    prefix: &str,
    name: &str,
    value: &str,
) -> Result<(), Malformed> {
    let invalid = || Malformed(format!("{prefix} {name} has the value {value:?}"));
    match field_of(counters, name) {
        Some(field) => *field = value.parse().map_err(|_| invalid())?,
        None if value.parse::<i64>().is_ok() || value.parse::<u64>().is_ok() => {}
        None => return Err(invalid()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/net/netstat` of a 6.18 kernel.
    const NETSTAT_SAMPLE: &str = "\
TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts PruneCalled RcvPruned OfoPruned OutOfWindowIcmps LockDroppedIcmps ArpFilter TW TWRecycled TWKilled PAWSActive PAWSEstab BeyondWindow TSEcrRejected PAWSOldAck PAWSTimewait DelayedACKs DelayedACKLocked DelayedACKLost ListenOverflows ListenDrops TCPHPHits TCPPureAcks TCPHPAcks TCPRenoRecovery TCPSackRecovery TCPSACKReneging TCPSACKReorder TCPRenoReorder TCPTSReorder TCPFullUndo TCPPartialUndo TCPDSACKUndo TCPLossUndo TCPLostRetransmit TCPRenoFailures TCPSackFailures TCPLossFailures TCPFastRetrans TCPSlowStartRetrans TCPTimeouts TCPLossProbes TCPLossProbeRecovery TCPRenoRecoveryFail TCPSackRecoveryFail TCPRcvCollapsed TCPBacklogCoalesce TCPDSACKOldSent TCPDSACKOfoSent TCPDSACKRecv TCPDSACKOfoRecv TCPAbortOnData TCPAbortOnClose TCPAbortOnMemory TCPAbortOnTimeout TCPAbortOnLinger TCPAbortFailed TCPMemoryPressures TCPMemoryPressuresChrono TCPSACKDiscard TCPDSACKIgnoredOld TCPDSACKIgnoredNoUndo TCPSpuriousRTOs TCPMD5NotFound TCPMD5Unexpected TCPMD5Failure TCPSackShifted TCPSackMerged TCPSackShiftFallback TCPBacklogDrop PFMemallocDrop TCPMinTTLDrop TCPDeferAcceptDrop IPReversePathFilter TCPTimeWaitOverflow TCPReqQFullDoCookies TCPReqQFullDrop TCPRetransFail TCPRcvCoalesce TCPOFOQueue TCPOFODrop TCPOFOMerge TCPChallengeACK TCPSYNChallenge TCPFastOpenActive TCPFastOpenActiveFail TCPFastOpenPassive TCPFastOpenPassiveFail TCPFastOpenListenOverflow TCPFastOpenCookieReqd TCPFastOpenBlackhole TCPSpuriousRtxHostQueues BusyPollRxPackets TCPAutoCorking TCPFromZeroWindowAdv TCPToZeroWindowAdv TCPWantZeroWindowAdv TCPSynRetrans TCPOrigDataSent TCPHystartTrainDetect TCPHystartTrainCwnd TCPHystartDelayDetect TCPHystartDelayCwnd TCPACKSkippedSynRecv TCPACKSkippedPAWS TCPACKSkippedSeq TCPACKSkippedFinWait2 TCPACKSkippedTimeWait TCPACKSkippedChallenge TCPWinProbe TCPKeepAlive TCPMTUPFail TCPMTUPSuccess TCPDelivered TCPDeliveredCE TCPAckCompressed TCPZeroWindowDrop TCPRcvQDrop TCPWqueueTooBig TCPFastOpenPassiveAltKey TcpTimeoutRehash TcpDuplicateDataRehash TCPDSACKRecvSegs TCPDSACKIgnoredDubious TCPMigrateReqSuccess TCPMigrateReqFailure TCPPLBRehash TCPAORequired TCPAOBad TCPAOKeyNotFound TCPAOGood TCPAODroppedIcmps
TcpExt: 0 0 0 0 0 0 0 0 0 0 870 0 0 0 0 0 0 0 0 588 0 54 0 0 15557 3631 17384 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 2 40 0 0 0 0 472 54 0 38 0 56 112 0 0 0 0 0 0 0 0 38 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 6090 2 0 0 0 0 0 0 0 0 0 0 0 2 0 242 409 413 175 0 23363 0 0 0 0 0 0 0 0 0 0 0 0 0 0 24242 0 0 0 0 0 0 2 0 38 0 0 0 0 0 0 0 0 0
IpExt: InNoRoutes InTruncatedPkts InMcastPkts OutMcastPkts InBcastPkts OutBcastPkts InOctets OutOctets InMcastOctets OutMcastOctets InBcastOctets OutBcastOctets InCsumErrors InNoECTPkts InECT1Pkts InECT0Pkts InCEPkts ReasmOverlaps
IpExt: 0 0 0 0 0 0 244516689 49008728 0 0 0 0 0 37521 0 0 0 0
MPTcpExt: MPCapableSYNRX MPCapableSYNTX MPCapableSYNACKRX MPCapableACKRX MPCapableFallbackACK MPCapableFallbackSYNACK MPCapableSYNTXDrop MPCapableSYNTXDisabled MPCapableEndpAttempt MPFallbackTokenInit MPTCPRetrans MPJoinNoTokenFound MPJoinSynRx MPJoinSynBackupRx MPJoinSynAckRx MPJoinSynAckBackupRx MPJoinSynAckHMacFailure MPJoinAckRx MPJoinAckHMacFailure MPJoinRejected MPJoinSynTx MPJoinSynTxCreatSkErr MPJoinSynTxBindErr MPJoinSynTxConnectErr DSSNotMatching DSSCorruptionFallback DSSCorruptionReset InfiniteMapTx InfiniteMapRx DSSNoMatchTCP DataCsumErr OFOQueueTail OFOQueue OFOMerge NoDSSInWindow DuplicateData AddAddr AddAddrTx AddAddrTxDrop EchoAdd EchoAddTx EchoAddTxDrop PortAdd AddAddrDrop MPJoinPortSynRx MPJoinPortSynAckRx MPJoinPortAckRx MismatchPortSynRx MismatchPortAckRx RmAddr RmAddrDrop RmAddrTx RmAddrTxDrop RmSubflow MPPrioTx MPPrioRx MPFailTx MPFailRx MPFastcloseTx MPFastcloseRx MPRstTx MPRstRx SubflowStale SubflowRecover SndWndShared RcvWndShared RcvWndConflictUpdate RcvWndConflict MPCurrEstab Blackhole MPCapableDataFallback MD5SigFallback DssFallback SimultConnectFallback FallbackFailed WinProbe
MPTcpExt: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
";

    /// `/proc/net/snmp` of the same kernel; `Tcp: MaxConn` is -1.
    const SNMP_SAMPLE: &str = "\
Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates OutTransmits
Ip: 2 64 37493 0 0 0 0 0 37493 34573 0 0 0 0 0 0 0 0 0 34573
Icmp: InMsgs InErrors InCsumErrors InDestUnreachs InTimeExcds InParmProbs InSrcQuenchs InRedirects InEchos InEchoReps InTimestamps InTimestampReps InAddrMasks InAddrMaskReps OutMsgs OutErrors OutRateLimitGlobal OutRateLimitHost OutDestUnreachs OutTimeExcds OutParmProbs OutSrcQuenchs OutRedirects OutEchos OutEchoReps OutTimestamps OutTimestampReps OutAddrMasks OutAddrMaskReps
Icmp: 1 0 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
IcmpMsg: InType3
IcmpMsg: 1
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 1019 960 12 189 2 37393 34776 39 0 196 0
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 99 0 0 100 0 0 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 0 0 0
";

    /// `/proc/net/sockstat` of the same kernel.
    const SOCKSTAT_SAMPLE: &str = "\
sockets: used 31
TCP: inuse 11 orphan 0 tw 8 alloc 14 mem 276
UDP: inuse 0 mem 0
UDPLITE: inuse 0
RAW: inuse 0
FRAG: inuse 0 memory 0
";

    fn parse_all(netstat: &str, snmp: &str, sockstat: &str) -> KernelCounters {
        let mut counters = KernelCounters::default();
        parse_netstat(netstat, &mut counters).unwrap();
        parse_snmp(snmp, &mut counters).unwrap();
        parse_sockstat(sockstat, &mut counters).unwrap();
        counters
    }

    fn rejected(parse: Parser, text: &str) -> String {
        let mut counters = KernelCounters::default();
        match parse(text, &mut counters) {
            Err(Malformed(line)) => line,
            Ok(()) => panic!("accepted {text:?} as {counters:?}"),
        }
    }

    #[test]
    fn parses_a_real_sample() {
        let counters = parse_all(NETSTAT_SAMPLE, SNMP_SAMPLE, SOCKSTAT_SAMPLE);
        assert_eq!(
            counters,
            KernelCounters {
                time_wait_overflow: 0,
                listen_overflows: 0,
                listen_drops: 0,
                abort_on_memory: 0,
                active_opens: 1019,
                passive_opens: 960,
                attempt_fails: 12,
                estab_resets: 189,
                out_resets: 196,
                retrans_segs: 39,
                in_errs: 0,
                orphans: 0,
                time_wait_sockstat: 8,
                allocated: 14,
                in_use: 11,
                memory_pages: 276,
            }
        );
    }

    #[test]
    fn matches_names_to_values_by_position() {
        let mut counters = KernelCounters::default();
        parse_netstat(
            "TcpExt: ListenDrops TCPAbortOnMemory ListenOverflows TCPTimeWaitOverflow\n\
             TcpExt: 4 3 2 1\n",
            &mut counters,
        )
        .unwrap();
        assert_eq!(counters.listen_drops, 4);
        assert_eq!(counters.abort_on_memory, 3);
        assert_eq!(counters.listen_overflows, 2);
        assert_eq!(counters.time_wait_overflow, 1);
    }

    #[test]
    fn tcp_does_not_match_tcpext_nor_mptcpext() {
        let mut counters = KernelCounters::default();
        parse_snmp(
            "TcpExt: ActiveOpens\nTcpExt: 7\nTcp: ActiveOpens\nTcp: 5\n",
            &mut counters,
        )
        .unwrap();
        assert_eq!(counters.active_opens, 5);
        parse_netstat(
            "MPTcpExt: ListenDrops\nMPTcpExt: 9\nTcpExt: ListenDrops\nTcpExt: 6\n",
            &mut counters,
        )
        .unwrap();
        assert_eq!(counters.listen_drops, 6);
    }

    #[test]
    fn missing_and_unknown_counters_are_fine() {
        let counters = parse_all(
            "TcpExt: SyncookiesSent ListenOverflows SomeFutureCounter\n\
             TcpExt: 1 7 18446744073709551615\n",
            "Tcp: RtoAlgorithm MaxConn ActiveOpens\nTcp: 1 -1 42\n",
            "TCP: inuse 3 tw 2\n",
        );
        assert_eq!(
            counters,
            KernelCounters {
                listen_overflows: 7,
                active_opens: 42,
                in_use: 3,
                time_wait_sockstat: 2,
                ..KernelCounters::default()
            }
        );
    }

    #[test]
    fn reads_counters_beyond_i64() {
        let mut counters = KernelCounters::default();
        parse_snmp(
            "Tcp: RetransSegs\nTcp: 18446744073709551615\n",
            &mut counters,
        )
        .unwrap();
        assert_eq!(counters.retrans_segs, u64::MAX);
    }

    #[test]
    fn mismatched_header_and_values_are_an_error() {
        let line = rejected(
            parse_netstat,
            "TcpExt: ListenOverflows ListenDrops\nTcpExt: 1 2 3\n",
        );
        assert!(
            line.contains("2 names but the value line has 3 values"),
            "{line}"
        );
        rejected(parse_snmp, "Tcp: ActiveOpens PassiveOpens\nTcp: 1\n");
        rejected(parse_snmp, "Tcp: ActiveOpens PassiveOpens\nTcp:\n");
        rejected(parse_netstat, "TcpExt: ListenDrops\n");
        rejected(parse_netstat, "TcpExt: ListenDrops\nIpExt: 1\n");
        rejected(parse_sockstat, "TCP: inuse 5 orphan\n");
    }

    #[test]
    fn mismatched_lines_leave_the_fields_untouched() {
        let mut counters = KernelCounters::default();
        let outcome = parse_netstat(
            "TcpExt: ListenOverflows ListenDrops\nTcpExt: 1\n",
            &mut counters,
        );
        assert!(outcome.is_err());
        assert_eq!(counters, KernelCounters::default());
    }

    #[test]
    fn bad_values_are_an_error() {
        let line = rejected(parse_snmp, "Tcp: MaxConn ActiveOpens\nTcp: -1 -5\n");
        assert!(line.contains("ActiveOpens"), "{line}");
        rejected(parse_snmp, "Tcp: ActiveOpens\nTcp: 1.5\n");
        rejected(parse_snmp, "Tcp: MaxConn ActiveOpens\nTcp: x 5\n");
        rejected(parse_netstat, "TcpExt: TCPTimeWaitOverflow\nTcpExt: many\n");
        rejected(parse_sockstat, "TCP: inuse -1\n");
        rejected(parse_sockstat, "TCP: inuse 1 newgauge lots\n");
    }

    #[test]
    fn garbage_is_an_error() {
        let garbage = [
            "",
            "\n\n",
            "hello world\n",
            "\u{0}\u{1}\u{fffd}",
            SOCKSTAT_SAMPLE,
            "TcpExt:TCPTimeWaitOverflow 1",
        ];
        for text in garbage {
            rejected(parse_netstat, text);
            rejected(parse_snmp, text);
        }
        for text in ["", "hello world\n", NETSTAT_SAMPLE, "TCP inuse 5\n"] {
            rejected(parse_sockstat, text);
        }
    }

    #[test]
    fn reads_the_live_files() {
        let before = read_kernel_counters().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let after = read_kernel_counters().unwrap();
        drop((client, server, listener));
        assert!(
            after.active_opens > before.active_opens,
            "{before:?} {after:?}"
        );
        assert!(
            after.passive_opens > before.passive_opens,
            "{before:?} {after:?}"
        );
        assert!(after.in_use >= 3, "{after:?}");
        assert!(after.allocated >= 3, "{after:?}");
        assert!(after.listen_drops >= after.listen_overflows, "{after:?}");
    }

    #[test]
    fn reads_the_calling_threads_namespace() {
        let namespace = sockfleet_testkit::IsolatedNamespace::new();
        let (fresh, open, closed) = namespace.run(|| {
            let fresh = read_kernel_counters().unwrap();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            let open = read_kernel_counters().unwrap();
            drop(client);
            drop(server);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let closed = loop {
                let counters = read_kernel_counters().unwrap();
                if counters.time_wait_sockstat == 1 || std::time::Instant::now() > deadline {
                    break counters;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            };
            drop(listener);
            (fresh, open, closed)
        });
        assert_eq!(
            (fresh.active_opens, fresh.passive_opens, fresh.in_use),
            (0, 0, 0),
            "{fresh:?}"
        );
        assert_eq!(fresh.time_wait_sockstat, 0, "{fresh:?}");
        assert_eq!(
            (open.active_opens, open.passive_opens, open.in_use),
            (1, 1, 3),
            "{open:?}"
        );
        // The client closed first: it waits in TIME_WAIT; only the listener is still in use.
        assert_eq!(
            (closed.time_wait_sockstat, closed.in_use),
            (1, 1),
            "{closed:?}"
        );
    }

    #[test]
    fn serializes_field_names() {
        let counters = KernelCounters {
            time_wait_sockstat: 8,
            ..KernelCounters::default()
        };
        let json = serde_json::to_value(counters).unwrap();
        assert_eq!(json["time_wait_sockstat"], 8);
        let back: KernelCounters = serde_json::from_value(json).unwrap();
        assert_eq!(back, counters);
    }
}
