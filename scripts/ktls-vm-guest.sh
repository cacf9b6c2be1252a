#!/bin/sh
# Runs inside the ktls-vm guest (busybox sh, a stock Debian kernel with tls.ko loaded).
#   usage: ktls-vm-guest.sh SUITE...   (basic, norekey, rekey, bad)
#
# basic   (any kernel) For each TLS mode: start krpc-server, make 5,000 Echo RPCs with the krpc
#         client in the same mode, sample /proc/net/tls_stat while they run, check what the
#         kernel saw. rustls: the kernel's session counters stay at 0 (so the ktls check can
#         fail); ktls: TlsCurrTxSw and TlsCurrRxSw reach >= 2 (both ends in the kernel), no
#         decrypt error, krpc-loadgen runs over kTLS without errors, /metrics says
#         krpc_ktls_available 1 and re-exports the kernel's counters.
# rekey   (Linux >= 6.14) A user-space rustls client that sends a KeyUpdate every 100 writes:
#         10,000 Echo RPCs byte-exact, the server rekeys both directions for the peer, and the
#         kernel's rekey counters match krpc's exactly. Then krpc client and server both in kTLS
#         with the rekey limit at 300 records: self-initiated rekeys on both sides of one
#         connection, every RPC byte-exact; krpc-loadgen (8 streams in flight) against the same
#         server while it rekeys; again the kernel's counters match krpc's exactly.
# norekey (Linux < 6.14) The rustls client's KeyUpdate closes its connection with reason
#         rekey_unsupported and one log line; the server keeps serving; the rekey limit closes a
#         kTLS connection with reason record_limit; Info says the kernel cannot rekey.
# bad     (any kernel) A kTLS client sends one bad record after the handshake (ChangeCipherSpec,
#         a 4-byte alert, an unknown type, a ClientHello, a bad KeyUpdate): that connection
#         closes with the reason counted, nothing panics, the server keeps serving.
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
failed=0
metrics_url=http://127.0.0.1:9100/metrics
tls="--ca certs/ca.pem --addr 127.0.0.1:50051"

# Clients get a deadline, so a hang fails its own check instead of the whole VM's timeout.
krpc() { timeout 300 krpc "$@"; }
loadgen() { timeout 120 krpc-loadgen "$@"; }
kstat() { awk -v k="$1" '$1 == k { print $2 }' /proc/net/tls_stat; }
fail() { echo "FAIL: $*"; failed=1; }
# The value of one sample in a scraped metrics file: metric FILE 'name{labels}'.
metric() { awk -v s="$2" 'index($0, s " ") == 1 { print $2 }' "$1"; }
# A counter from the krpc CLI's "ktls: rekeys tx/self 3, ..." line: cli_rekeys FILE tx/self.
cli_rekeys() { sed -n "s|^ktls: .*$2 \([0-9]*\).*|\1|p" "$1"; }

# start_server NAME ARGS...: krpc-server on 127.0.0.1:50051, waits until it listens.
start_server() {
    local name=$1 log="$here/server-$1.log" tries=0
    shift
    krpc-server --listen 127.0.0.1:50051 --cores 2 \
        --cert certs/server.pem --key certs/server.key "$@" 2>"$log" &
    server=$!
    until grep -q "krpc-server listening" "$log" 2>/dev/null; do
        tries=$((tries + 1))
        if [ $tries -gt 1200 ] || ! kill -0 $server 2>/dev/null; then
            cat "$log"
            fail "$name: server did not start"
            return 1
        fi
        sleep 0.1
    done
}

# stop_server NAME: SIGTERM, must exit 0 and must not have panicked.
stop_server() {
    local status
    kill -TERM $server
    wait $server
    status=$?
    [ $status -eq 0 ] || { cat "$here/server-$1.log"; fail "$1: server exited $status on SIGTERM"; }
    if grep -q "panicked" "$here/server-$1.log"; then
        grep "panicked" "$here/server-$1.log"
        fail "$1: the server panicked"
    fi
}

scrape() {
    wget -qO "$here/metrics-$1.txt" "$metrics_url" || fail "$1: cannot fetch /metrics"
}

suite_basic() {
    # rustls first, on a fresh kernel, so its counters are exactly 0.
    run_mode rustls
    run_mode ktls
}

run_mode() {
    mode=$1
    rpcs=5000
    txsw0=$(kstat TlsTxSw)
    start_server "$mode" --tls "$mode" || return
    krpc --tls "$mode" $tls info >"$here/info-$mode.out" 2>&1 \
        || fail "$mode: Info RPC failed: $(cat "$here/info-$mode.out")"

    krpc --tls "$mode" $tls echo --repeat $rpcs --size 64 >"$here/client-$mode.out" 2>&1 &
    client=$!
    max_tx=0
    max_rx=0
    while kill -0 $client 2>/dev/null; do
        tx=$(kstat TlsCurrTxSw)
        rx=$(kstat TlsCurrRxSw)
        [ "$tx" -gt "$max_tx" ] && max_tx=$tx
        [ "$rx" -gt "$max_rx" ] && max_rx=$rx
        sleep 0.02
    done
    wait $client
    client_rc=$?
    if [ "$mode" = ktls ]; then
        # While the server still runs: the load generator over kTLS, and the server's metrics.
        loadgen run --tls ktls $tls --rate 100 --duration 3s --warmup 1s --connections 2 \
            --concurrency 4 --quiet --json "$here/loadgen.json" >"$here/loadgen.out" 2>&1
        loadgen_rc=$?
        scrape ktls
    fi
    stop_server "$mode"

    echo "== basic $mode: client exit $client_rc"
    cat "$here/client-$mode.out"
    grep -E "^(connection tls|cipher|ktls)" "$here/info-$mode.out"
    echo "max TlsCurrTxSw=$max_tx max TlsCurrRxSw=$max_rx during the run"
    sed 's/^/  /' /proc/net/tls_stat

    [ $client_rc -eq 0 ] || fail "$mode: client failed"
    grep -q "^$rpcs Echo RPCs, every reply identical to its payload" "$here/client-$mode.out" \
        || fail "$mode: not every RPC returned its payload byte for byte"
    [ "$(kstat TlsDecryptError)" -eq 0 ] || fail "$mode: TlsDecryptError is not 0"
    case $mode in
    rustls)
        # No kernel session ever existed: none open now, none installed for receiving. TlsTxSw
        # counts the kTLS probes (3 TLS_TX setsockopts per probing process; clients in
        # --tls rustls do not probe, so here only the server's).
        for k in TlsCurrTxSw TlsCurrRxSw TlsRxSw; do
            [ "$(kstat $k)" -eq 0 ] || fail "rustls: $k is $(kstat $k), expected 0"
        done
        [ $(($(kstat TlsTxSw) - txsw0)) -le 3 ] \
            || fail "rustls: TlsTxSw went up by $(($(kstat TlsTxSw) - txsw0)), more than the probe's 3"
        [ "$max_tx" -eq 0 ] && [ "$max_rx" -eq 0 ] || fail "rustls: kernel TLS sessions seen"
        grep -q "^ktls: *off" "$here/info-$mode.out" || fail "rustls: Info says kTLS carries it"
        ;;
    ktls)
        [ "$max_tx" -ge 2 ] || fail "ktls: TlsCurrTxSw peaked at $max_tx, expected >= 2"
        [ "$max_rx" -ge 2 ] || fail "ktls: TlsCurrRxSw peaked at $max_rx, expected >= 2"
        grep -q "^ktls: *on" "$here/info-$mode.out" || fail "ktls: Info says kTLS does not carry it"
        grep -q "^ktls: rekeys .*; record errors: none" "$here/client-$mode.out" \
            || fail "ktls: the client's kTLS connection saw record errors"
        # krpc-loadgen over kTLS: every RPC answered OK, and the server said kTLS carried it.
        sed 's/^/  loadgen: /' "$here/loadgen.out"
        [ "$loadgen_rc" -eq 0 ] || fail "ktls: krpc-loadgen exited $loadgen_rc"
        grep -q "errors: none" "$here/loadgen.out" || fail "ktls: krpc-loadgen saw errors"
        grep -q '"tls_mode": "ktls"' "$here/loadgen.json" || fail "ktls: loadgen's result does not say ktls"
        # The server's metrics on a kernel with kTLS: available, connections by kTLS, and the
        # kernel's own counters re-exported.
        m="$here/metrics-ktls.txt"
        grep -E '^krpc_(ktls_available|kernel_tls_current\{stat="TlsCurrTxSw"\}|connections_accepted_total\{tls="ktls"\})' \
            "$m" | sed 's/^/  metrics: /'
        [ "$(metric "$m" krpc_ktls_available)" = 1 ] || fail "ktls: krpc_ktls_available is not 1"
        [ -n "$(metric "$m" 'krpc_kernel_tls_current{stat="TlsCurrTxSw"}')" ] \
            || fail "ktls: the kernel's TlsCurrTxSw is not re-exported"
        [ -n "$(metric "$m" 'krpc_connections_accepted_total{tls="ktls"}')" ] \
            || fail "ktls: no connection counted under tls=ktls"
        ;;
    esac
}

# The server's kTLS counters and the kernel's rekey counters, for one check.
rekey_counts() {
    local m=$1
    s_tx_self=$(metric "$m" 'krpc_ktls_rekeys_total{direction="tx",initiator="self"}')
    s_tx_peer=$(metric "$m" 'krpc_ktls_rekeys_total{direction="tx",initiator="peer"}')
    s_rx_peer=$(metric "$m" 'krpc_ktls_rekeys_total{direction="rx",initiator="peer"}')
    s_errors=$(grep '^krpc_ktls_record_errors_total{' "$m" | awk '{ n += $2 } END { print n + 0 }')
    echo "  server: rekeys tx/self=$s_tx_self tx/peer=$s_tx_peer rx/peer=$s_rx_peer, record errors $s_errors"
}

suite_rekey() {
    echo "== rekey: a rustls client that sends a KeyUpdate every 100 writes"
    grep -q "rekey (KeyUpdate): yes" "$here/probe.out" || fail "rekey: the probe says this kernel cannot rekey"
    tx0=$(kstat TlsTxRekeyOk)
    rx0=$(kstat TlsRxRekeyOk)
    got0=$(kstat TlsRxRekeyReceived)
    start_server rekey-peer --tls ktls || return
    rpcs=10000
    krpc --tls rustls --rustls-key-update-every 100 $tls echo --repeat $rpcs --size 64 \
        >"$here/client-rekey-peer.out" 2>&1
    rc=$?
    scrape rekey-peer
    stop_server rekey-peer
    cat "$here/client-rekey-peer.out"
    rekey_counts "$here/metrics-rekey-peer.txt"
    dtx=$(($(kstat TlsTxRekeyOk) - tx0))
    drx=$(($(kstat TlsRxRekeyOk) - rx0))
    dgot=$(($(kstat TlsRxRekeyReceived) - got0))
    echo "  kernel: TlsTxRekeyOk +$dtx TlsRxRekeyOk +$drx TlsRxRekeyReceived +$dgot" \
        "TlsDecryptError $(kstat TlsDecryptError) TlsTxRekeyError $(kstat TlsTxRekeyError)" \
        "TlsRxRekeyError $(kstat TlsRxRekeyError)"
    [ $rc -eq 0 ] || fail "rekey: the rustls client failed"
    grep -q "^$rpcs Echo RPCs, every reply identical to its payload" "$here/client-rekey-peer.out" \
        || fail "rekey: not every RPC returned its payload byte for byte"
    [ "${s_rx_peer:-0}" -gt 0 ] || fail "rekey: the server installed no RX key for the peer"
    [ "${s_tx_peer:-0}" -gt 0 ] || fail "rekey: the server answered no KeyUpdate with its own"
    [ "$s_errors" -eq 0 ] || fail "rekey: the server closed connections for a record"
    # Every rekey krpc counts, the kernel counts too, and nothing else; the server's probe adds
    # one TX rekey of its own (its test of a second key). The rustls client does not probe.
    [ $drx -eq "$s_rx_peer" ] || fail "rekey: TlsRxRekeyOk +$drx, the server counted $s_rx_peer"
    [ $dgot -eq "$s_rx_peer" ] || fail "rekey: TlsRxRekeyReceived +$dgot, the server counted $s_rx_peer"
    [ $dtx -eq $((s_tx_self + s_tx_peer + 1)) ] \
        || fail "rekey: TlsTxRekeyOk +$dtx, the server counted $((s_tx_self + s_tx_peer)) and 1 probe"
    for k in TlsDecryptError TlsTxRekeyError TlsRxRekeyError; do
        [ "$(kstat $k)" -eq 0 ] || fail "rekey: $k is $(kstat $k)"
    done

    echo "== rekey: krpc client and server both in kTLS, rekey limit 300 records"
    tx0=$(kstat TlsTxRekeyOk)
    rx0=$(kstat TlsRxRekeyOk)
    start_server rekey-self --tls ktls --ktls-rekey-after 300 || return
    rpcs=3000
    krpc --tls ktls --ktls-rekey-after 300 $tls echo --repeat $rpcs --size 1024 \
        >"$here/client-rekey-self.out" 2>&1
    rc=$?
    # The load generator's kTLS connections, 8 streams in flight, answer the server's rekeys.
    loadgen run --tls ktls $tls --rate 200 --duration 3s --warmup 1s --connections 2 \
        --concurrency 8 --payload 1024 --quiet >"$here/loadgen-rekey.out" 2>&1
    loadgen_rc=$?
    scrape rekey-self
    stop_server rekey-self
    cat "$here/client-rekey-self.out"
    sed 's/^/  loadgen: /' "$here/loadgen-rekey.out"
    rekey_counts "$here/metrics-rekey-self.txt"
    c_tx_self=$(cli_rekeys "$here/client-rekey-self.out" tx/self)
    c_tx_peer=$(cli_rekeys "$here/client-rekey-self.out" tx/peer)
    c_rx_peer=$(cli_rekeys "$here/client-rekey-self.out" rx/peer)
    dtx=$(($(kstat TlsTxRekeyOk) - tx0))
    drx=$(($(kstat TlsRxRekeyOk) - rx0))
    echo "  kernel: TlsTxRekeyOk +$dtx TlsRxRekeyOk +$drx"
    [ $rc -eq 0 ] || fail "rekey: the kTLS client failed"
    grep -q "^$rpcs Echo RPCs, every reply identical to its payload" "$here/client-rekey-self.out" \
        || fail "rekey: not every kTLS RPC returned its payload byte for byte"
    # On the one connection between them, both sides rekeyed at their own limit: the client's
    # KeyUpdates are the server's RX rekeys, the server's are the client's.
    [ "${c_tx_self:-0}" -gt 0 ] || fail "rekey: the client never rekeyed at its limit"
    [ "${c_rx_peer:-0}" -gt 0 ] || fail "rekey: the server never rekeyed at its limit on the client's connection"
    [ "$s_rx_peer" -eq "$c_tx_self" ] \
        || fail "rekey: the server installed $s_rx_peer RX keys for the client's $c_tx_self KeyUpdates"
    [ "${c_tx_peer:-0}" -eq 0 ] && [ "${s_tx_peer:-0}" -eq 0 ] \
        || fail "rekey: a self-initiated KeyUpdate asked the peer to update"
    [ "$s_errors" -eq 0 ] || fail "rekey: the server closed connections for a record"
    grep -q "; record errors: none" "$here/client-rekey-self.out" || fail "rekey: client record errors"
    [ $loadgen_rc -eq 0 ] && grep -q "errors: none" "$here/loadgen-rekey.out" \
        || fail "rekey: krpc-loadgen saw errors while the server rekeyed"
    [ "$(kstat TlsDecryptError)" -eq 0 ] || fail "rekey: TlsDecryptError is $(kstat TlsDecryptError)"
    # The kernel saw every KeyUpdate krpc sent (the load generator sends none at its default
    # limit) as a TX rekey on one side and an RX rekey on the other, plus one TX rekey for each
    # of the 3 probes (server, krpc, krpc-loadgen), and nothing else.
    sent=$((s_tx_self + s_tx_peer + c_tx_self + c_tx_peer))
    [ $drx -eq $sent ] || fail "rekey: TlsRxRekeyOk +$drx, krpc sent $sent KeyUpdates"
    [ $dtx -eq $((sent + 3)) ] || fail "rekey: TlsTxRekeyOk +$dtx, krpc sent $sent KeyUpdates and 3 probes"
}

suite_norekey() {
    echo "== norekey: a rustls client's KeyUpdate against a kernel that cannot rekey"
    grep -q "rekey (KeyUpdate): no" "$here/probe.out" || fail "norekey: the probe says this kernel can rekey"
    # A peer's KeyUpdate on a kernel that cannot rekey is a per-peer failure: logged at debug.
    RUST_LOG=info,krpc_transport::ktls=debug start_server norekey --tls ktls || return
    krpc --tls ktls $tls info >"$here/info-norekey.out" 2>&1
    grep -q "^ktls rekey: *no" "$here/info-norekey.out" || fail "norekey: Info does not say rekey: no"
    krpc --tls rustls --rustls-key-update-every 100 $tls echo --repeat 1000 --size 64 \
        >"$here/client-norekey.out" 2>&1
    rc=$?
    # The server serves others on.
    krpc --tls ktls $tls echo --repeat 200 --size 64 >"$here/client-norekey-after.out" 2>&1
    after_rc=$?
    scrape norekey
    stop_server norekey

    echo "== norekey, ktls rekey limit 300: the connection closes at the limit"
    start_server record-limit --tls ktls --ktls-rekey-after 300 || return
    krpc --tls ktls $tls echo --repeat 1000 --size 64 >"$here/client-record-limit.out" 2>&1
    limit_rc=$?
    scrape record-limit
    stop_server record-limit

    sed 's/^/  rustls client: /' "$here/client-norekey.out"
    sed 's/^/  next client: /' "$here/client-norekey-after.out"
    closed=$(grep -c "kTLS connection closed" "$here/server-norekey.log")
    grep "kTLS connection closed" "$here/server-norekey.log" | sed 's/^/  server log: /'
    [ $rc -ne 0 ] || fail "norekey: the rustls client's KeyUpdate did not close its connection"
    [ "$closed" -eq 1 ] || fail "norekey: $closed 'kTLS connection closed' log lines, expected 1"
    grep "kTLS connection closed" "$here/server-norekey.log" | grep -q "rekey_unsupported" \
        || fail "norekey: the log line does not say rekey_unsupported"
    [ "$(metric "$here/metrics-norekey.txt" 'krpc_ktls_record_errors_total{reason="rekey_unsupported"}')" = 1 ] \
        || fail "norekey: krpc_ktls_record_errors_total{reason=rekey_unsupported} is not 1"
    [ "$(metric "$here/metrics-norekey.txt" krpc_ktls_rekey_supported)" = 0 ] \
        || fail "norekey: krpc_ktls_rekey_supported is not 0"
    [ $after_rc -eq 0 ] || fail "norekey: the server did not serve the next client"
    sed 's/^/  limit client: /' "$here/client-record-limit.out"
    grep "kTLS connection closed" "$here/server-record-limit.log" | sed 's/^/  server log: /'
    [ $limit_rc -ne 0 ] || fail "norekey: 1000 RPCs passed a 300-record limit without a rekey"
    [ "$(metric "$here/metrics-record-limit.txt" 'krpc_ktls_record_errors_total{reason="record_limit"}')" = 1 ] \
        || fail "norekey: krpc_ktls_record_errors_total{reason=record_limit} is not 1"
    [ "$(kstat TlsDecryptError)" -eq 0 ] || fail "norekey: TlsDecryptError is $(kstat TlsDecryptError)"
}

suite_bad() {
    echo "== bad: a kTLS client sends a bad record after the handshake"
    start_server bad --tls ktls || return
    # The record goes out on the client's first connection only; its Info may then fail, or
    # succeed on the channel's next connection. The server side is what is checked.
    for kind in ccs long-alert unknown-type client-hello bad-key-update; do
        krpc --tls ktls --inject-record $kind $tls info >"$here/client-bad-$kind.out" 2>&1
        echo "  client sending $kind: exit $?"
    done
    krpc --tls ktls $tls echo --repeat 100 --size 64 >"$here/client-bad-after.out" 2>&1 \
        || fail "bad: the server did not serve a good client after the bad ones"
    scrape bad
    stop_server bad
    m="$here/metrics-bad.txt"
    for reason in unexpected_ccs bad_alert unknown_record_type unexpected_handshake bad_handshake; do
        [ "$(metric "$m" "krpc_ktls_record_errors_total{reason=\"$reason\"}")" = 1 ] \
            || fail "bad: krpc_ktls_record_errors_total{reason=$reason} is not 1"
    done
    # Per-peer failures are counted and logged at debug: at the default level (info) five
    # bad peers leave no line, so a peer sending bad records in a loop cannot flood the log.
    closed=$(grep -c "kTLS connection closed" "$here/server-bad.log")
    [ "$closed" -eq 0 ] || fail "bad: $closed 'kTLS connection closed' lines at the default log level, expected 0 (per-peer failures log at debug)"
}

if [ ! -r /proc/net/tls_stat ]; then
    echo "FAIL: /proc/net/tls_stat missing: the guest kernel has no kTLS"
    exit 1
fi
echo "guest kernel: $(uname -r)"
krpc-server probe-ktls >"$here/probe.out" 2>&1
cat "$here/probe.out"
for suite in "$@"; do
    case $suite in
    basic | rekey | norekey | bad) "suite_$suite" ;;
    *) fail "unknown suite $suite" ;;
    esac
done

if [ $failed -ne 0 ]; then
    echo "ktls-vm test ($*): FAILED"
    exit 1
fi
echo "ktls-vm test ($*): passed"
