//! `throughline bench`: measurements of ingest speed, never assertions (tests assert).
//!
//! `bench http` is a load generator for a running server: many threads, each with its own
//! keep-alive HTTP/1.1 connection, posting Segment batches cut from a JSONL file, with a
//! hand-written minimal client so the generator costs as little CPU as possible next to the
//! server it measures. It can watch the server process through `/proc` (memory, CPU per
//! thread, bytes written to disk). `bench disk` is the baseline every number is compared
//! with: this disk's own write+fsync speed for chunks of a given size.
//!
//! Both are bounded in time and memory, and only talk to the address they are given;
//! `scripts/bench` runs them on loopback and writes `bench-out/ingest.md`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Batches built ahead of the clients, per client: bounds the generator's memory.
const BATCHES_AHEAD_PER_CLIENT: usize = 4;
/// One JSONL line at most; the server's own limit is 32 KB per message.
const LINE_BYTES_MAX: u64 = 1 << 20;
/// Response status line and each header line at most.
const HEADER_LINE_BYTES_MAX: u64 = 8 * 1024;
const HEADERS_MAX: usize = 64;
const RESPONSE_BODY_BYTES_MAX: usize = 1 << 20;
/// Tries of one batch answered 503 (overloaded) or cut by a dropped connection.
const TRIES_MAX: u32 = 20;
const RETRY_SLEEP_MS_MAX: u64 = 1000;
/// `/proc` reports CPU time in USER_HZ ticks, fixed at 100 per second in Linux's ABI.
const PROC_TICKS_PER_SECOND: f64 = 100.0;
const MONITOR_INTERVAL_MS: u64 = 50;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Load generator: POST /v1/batch from many keep-alive connections, report events/s
    /// and latency
    #[command(
        after_help = "Example:\n  throughline generate --brand headphones --persons 61000 --seed 1 --out events.jsonl\n  throughline bench http --url http://127.0.0.1:8080 --write-key wk_... \\\n      --clients 16 --batch 100 --messages 1000000 --file events.jsonl --server-pid 4242\n\nEvery message of the file should have its own messageId (the generator's do), so that\nnothing is deduplicated. Prints a JSON summary on stdout; `scripts/bench` runs it all."
    )]
    Http(HttpArgs),
    /// Baseline: this disk's sequential write speed with an fsync after every chunk
    #[command(
        after_help = "Example:\n  throughline bench disk --dir /tmp --chunk-bytes 65536 --total-bytes 268435456\n\nWrites a temporary file in DIR (deleted afterwards), calling fdatasync after each chunk,\nas a server that fsyncs once per request would. Prints a JSON summary on stdout."
    )]
    Disk(DiskArgs),
}

#[derive(Args)]
pub struct HttpArgs {
    /// Server base URL, http://HOST:PORT
    #[arg(long)]
    pub url: String,
    /// Project write key, sent as the HTTP Basic user name
    #[arg(long)]
    pub write_key: String,
    /// Concurrent connections, one thread each
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Messages per request
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Messages to send at most (default: the whole file)
    #[arg(long)]
    pub messages: Option<u64>,
    /// JSONL file of Segment messages, one per line
    #[arg(long)]
    pub file: PathBuf,
    /// Process id of the server, to sample its memory, CPU and disk writes from /proc
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Acknowledged-event counts at which to sample the server's memory
    /// (default: every 10% of --messages)
    #[arg(long, value_delimiter = ',')]
    pub rss_at: Vec<u64>,
    /// Stop sending after this many seconds and report what was done
    #[arg(long, default_value_t = 1800)]
    pub seconds_max: u64,
    /// Wait this long for GET /health to answer 200 before starting
    #[arg(long, default_value_t = 30)]
    pub ready_seconds: u64,
    /// No progress line on stderr
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct DiskArgs {
    /// Directory for the temporary file (use the disk the store lives on)
    #[arg(long)]
    pub dir: PathBuf,
    /// Bytes written between two fsyncs
    #[arg(long, default_value_t = 65536)]
    pub chunk_bytes: usize,
    /// Bytes to write in all
    #[arg(long, default_value_t = 256 << 20)]
    pub total_bytes: u64,
    /// Stop after this many seconds even if fewer bytes were written
    #[arg(long, default_value_t = 30)]
    pub seconds_max: u64,
}

pub fn run(command: BenchCommand) -> Result<()> {
    let summary = match command {
        BenchCommand::Http(args) => http(args)?,
        BenchCommand::Disk(args) => disk(args)?,
    };
    crate::output::json(&summary);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// bench disk

fn disk(args: DiskArgs) -> Result<Value> {
    if args.chunk_bytes == 0 || args.chunk_bytes > 1 << 30 {
        bail!("--chunk-bytes must be between 1 and 1 GiB");
    }
    let path = args
        .dir
        .join(format!("throughline-bench-disk-{}.tmp", std::process::id()));
    let result = disk_run(&path, &args);
    let _ = std::fs::remove_file(&path);
    result
}

fn disk_run(path: &Path, args: &DiskArgs) -> Result<Value> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    // Bytes that do not compress or repeat, in case the disk is clever.
    let mut chunk = vec![0u8; args.chunk_bytes];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in chunk.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds_max);
    let mut fsync_us = Vec::new();
    let mut written = 0u64;
    let started = Instant::now();
    while written < args.total_bytes && Instant::now() < deadline {
        let n = (args.total_bytes - written).min(chunk.len() as u64) as usize;
        chunk[0] = chunk[0].wrapping_add(1);
        file.write_all(&chunk[..n])?;
        let t = Instant::now();
        file.sync_data()?;
        fsync_us.push(t.elapsed().as_micros() as u64);
        written += n as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    fsync_us.sort_unstable();
    Ok(json!({
        "chunk_bytes": args.chunk_bytes,
        "bytes": written,
        "fsyncs": fsync_us.len(),
        "seconds": round3(seconds),
        "bytes_per_second": round3(written as f64 / seconds.max(1e-9)),
        "fsyncs_per_second": round3(fsync_us.len() as f64 / seconds.max(1e-9)),
        "fsync_mean_ms": round3(fsync_us.iter().sum::<u64>() as f64 / fsync_us.len().max(1) as f64 / 1000.0),
        "fsync_p50_ms": round3(percentile(&fsync_us, 0.50) as f64 / 1000.0),
        "fsync_p99_ms": round3(percentile(&fsync_us, 0.99) as f64 / 1000.0),
    }))
}

// ---------------------------------------------------------------------------------------
// bench http

/// One request ready to write: head and body, and how many messages it carries.
struct Batch {
    request: Vec<u8>,
    body_bytes: usize,
    messages: usize,
}

/// What all client threads add to while they run.
#[derive(Default)]
struct Shared {
    acked_events: AtomicU64,
    stop: AtomicBool,
    clients_done: AtomicUsize,
}

/// What one client thread measured.
#[derive(Default)]
struct ClientReport {
    latencies_us: Vec<u64>,
    requests: u64,
    messages_sent: u64,
    body_bytes: u64,
    acked_events: u64,
    accepted: u64,
    duplicates: u64,
    rejected: u64,
    status: BTreeMap<u16, u64>,
    io_errors: u64,
    gave_up_batches: u64,
    first_error: Option<String>,
}

fn http(args: HttpArgs) -> Result<Value> {
    if args.clients == 0 || args.clients > 1024 {
        bail!("--clients must be between 1 and 1024");
    }
    if args.batch == 0 || args.batch > 10_000 {
        bail!("--batch must be between 1 and 10000");
    }
    let (addr, authority) = parse_url(&args.url)?;
    wait_ready(addr, &authority, Duration::from_secs(args.ready_seconds))?;
    let messages_max = args.messages.unwrap_or(u64::MAX);
    let file =
        File::open(&args.file).with_context(|| format!("cannot open {}", args.file.display()))?;
    let head_prefix = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Basic {}\r\nContent-Type: application/json\r\nContent-Length: ",
        base64(format!("{}:", args.write_key).as_bytes())
    );

    let shared = Arc::new(Shared::default());
    let (batch_tx, batch_rx) = sync_channel::<Batch>(args.clients * BATCHES_AHEAD_PER_CLIENT);
    let batch_rx = Arc::new(Mutex::new(batch_rx));
    let messages_in_file = Arc::new(AtomicU64::new(0));
    let reader = {
        let shared = shared.clone();
        let counted = messages_in_file.clone();
        let batch = args.batch;
        let name = args.file.display().to_string();
        std::thread::Builder::new()
            .name("bench-reader".into())
            .spawn(move || -> Result<()> {
                let mut lines = BufReader::with_capacity(1 << 20, file);
                let mut sent = 0u64;
                while sent < messages_max && !shared.stop.load(Ordering::Relaxed) {
                    let want = (messages_max - sent).min(batch as u64) as usize;
                    let b = read_batch(&mut lines, want, &head_prefix)
                        .with_context(|| format!("reading {name}"))?;
                    let Some(b) = b else { break };
                    sent += b.messages as u64;
                    counted.store(sent, Ordering::Relaxed);
                    if batch_tx.send(b).is_err() {
                        break;
                    }
                }
                Ok(())
            })?
    };

    let server = args.server_pid;
    let cpu_before = ProcCpu::sample(server);
    let io_before = server.and_then(proc_write_bytes);
    let rss_start_kb = server.and_then(|p| proc_status_kb(p, "VmRSS"));
    let mut thresholds: Vec<u64> = if args.rss_at.is_empty() {
        match args.messages {
            Some(m) => (1..=10).map(|i| m * i / 10).collect(),
            None => Vec::new(),
        }
    } else {
        args.rss_at.clone()
    };
    thresholds.sort_unstable();
    thresholds.dedup();

    let started = Instant::now();
    let clients: Vec<_> = (0..args.clients)
        .map(|i| {
            let rx = batch_rx.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("bench-client-{i}"))
                .spawn(move || {
                    let report = client(addr, &rx, &shared);
                    shared.clients_done.fetch_add(1, Ordering::Relaxed);
                    report
                })
        })
        .collect::<std::io::Result<_>>()?;
    drop(batch_rx);

    let progress = crate::import::progress_bar(args.quiet);
    let deadline = started + Duration::from_secs(args.seconds_max);
    let mut rss_samples = Vec::new();
    let mut next_threshold = 0;
    // The largest RSS seen since the last sample: a point sample can miss a flush's peak.
    let mut window_max_kb = 0;
    let mut timed_out = false;
    while shared.clients_done.load(Ordering::Relaxed) < args.clients {
        std::thread::sleep(Duration::from_millis(MONITOR_INTERVAL_MS));
        let acked = shared.acked_events.load(Ordering::Relaxed);
        progress.set_position(acked);
        if let Some(pid) = server {
            let rss_kb = proc_status_kb(pid, "VmRSS").unwrap_or(0);
            window_max_kb = window_max_kb.max(rss_kb);
            while next_threshold < thresholds.len() && acked >= thresholds[next_threshold] {
                rss_samples.push(rss_sample(acked, started, rss_kb, window_max_kb));
                window_max_kb = 0;
                next_threshold += 1;
            }
        }
        if !timed_out && Instant::now() >= deadline {
            timed_out = true;
            shared.stop.store(true, Ordering::Relaxed);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let acked = shared.acked_events.load(Ordering::Relaxed);
    if let Some(pid) = server {
        // The last sample is taken with everything acknowledged.
        if next_threshold < thresholds.len() || rss_samples.is_empty() {
            let rss_kb = proc_status_kb(pid, "VmRSS").unwrap_or(0);
            rss_samples.push(rss_sample(
                acked,
                started,
                rss_kb,
                window_max_kb.max(rss_kb),
            ));
        }
    }
    let cpu_after = ProcCpu::sample(server);
    let io_after = server.and_then(proc_write_bytes);

    let mut total = ClientReport::default();
    for c in clients {
        let r = c.join().expect("client thread");
        total.latencies_us.extend(r.latencies_us);
        total.requests += r.requests;
        total.messages_sent += r.messages_sent;
        total.body_bytes += r.body_bytes;
        total.acked_events += r.acked_events;
        total.accepted += r.accepted;
        total.duplicates += r.duplicates;
        total.rejected += r.rejected;
        total.io_errors += r.io_errors;
        total.gave_up_batches += r.gave_up_batches;
        for (s, n) in r.status {
            *total.status.entry(s).or_default() += n;
        }
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
    }
    reader.join().expect("reader thread")?;
    let lat = &mut total.latencies_us;
    lat.sort_unstable();
    let ms = |us: u64| round3(us as f64 / 1000.0);
    let non_200: u64 = total
        .status
        .iter()
        .filter(|(s, _)| **s != 200)
        .map(|(_, n)| n)
        .sum();
    let avg_message_bytes = total.body_bytes as f64 / total.messages_sent.max(1) as f64;

    let mut out = json!({
        "url": args.url,
        "clients": args.clients,
        "batch": args.batch,
        "messages_read": messages_in_file.load(Ordering::Relaxed),
        "messages_sent": total.messages_sent,
        "requests": total.requests,
        "events_acknowledged": total.acked_events,
        "accepted": total.accepted,
        "duplicates": total.duplicates,
        "rejected": total.rejected,
        "non_200": non_200,
        "status_counts": total.status.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "io_errors": total.io_errors,
        "batches_given_up": total.gave_up_batches,
        "first_error": total.first_error,
        "timed_out": timed_out,
        "seconds": round3(seconds),
        "events_per_second": round3(total.acked_events as f64 / seconds.max(1e-9)),
        "requests_per_second": round3(total.requests as f64 / seconds.max(1e-9)),
        "body_bytes": total.body_bytes,
        "body_bytes_per_request": round3(total.body_bytes as f64 / total.requests.max(1) as f64),
        "body_bytes_per_message": round3(avg_message_bytes),
        "acked_bytes_per_second": round3(total.acked_events as f64 * avg_message_bytes / seconds.max(1e-9)),
        "latency_p50_ms": ms(percentile(lat, 0.50)),
        "latency_p90_ms": ms(percentile(lat, 0.90)),
        "latency_p99_ms": ms(percentile(lat, 0.99)),
        "latency_max_ms": ms(lat.last().copied().unwrap_or(0)),
        "loadgen_cpu_seconds": round3(cpu_after.own - cpu_before.own),
    });
    if let Some(pid) = server {
        let mut by_thread: BTreeMap<String, f64> = BTreeMap::new();
        for (tid, (comm, after)) in &cpu_after.server_threads {
            let before = cpu_before.server_threads.get(tid).map_or(0.0, |(_, b)| *b);
            *by_thread.entry(thread_group(comm)).or_default() += after - before;
        }
        let o = out.as_object_mut().expect("object");
        o.insert("server_pid".into(), json!(pid));
        o.insert(
            "server_cpu_seconds".into(),
            json!(round3(cpu_after.server - cpu_before.server)),
        );
        o.insert(
            "server_cpu_seconds_by_thread".into(),
            json!(by_thread
                .into_iter()
                .map(|(k, v)| (k, json!(round3(v))))
                .collect::<serde_json::Map<_, _>>()),
        );
        if let (Some(a), Some(b)) = (io_after, io_before) {
            o.insert("server_disk_write_bytes".into(), json!(a.saturating_sub(b)));
        }
        o.insert(
            "server_rss_start_mb".into(),
            json!(rss_start_kb.map(|kb| round3(kb as f64 / 1024.0))),
        );
        o.insert(
            "server_rss_end_mb".into(),
            json!(rss_samples
                .last()
                .and_then(|s: &Value| s.get("rss_mb").cloned())),
        );
        o.insert(
            "server_rss_peak_mb".into(),
            json!(proc_status_kb(pid, "VmHWM").map(|kb| round3(kb as f64 / 1024.0))),
        );
        o.insert("server_rss_samples".into(), json!(rss_samples));
        o.insert(
            "server_metrics".into(),
            server_metrics(addr, &authority).unwrap_or_default(),
        );
    }
    Ok(out)
}

/// Reads up to `want` non-empty lines and wraps them as one `/v1/batch` request;
/// `None` at the end of the file.
fn read_batch(lines: &mut impl BufRead, want: usize, head_prefix: &str) -> Result<Option<Batch>> {
    let mut body = Vec::with_capacity(want * 1024);
    body.extend_from_slice(b"{\"batch\":[");
    let mut messages = 0;
    let mut line = Vec::new();
    while messages < want {
        line.clear();
        let n = lines
            .by_ref()
            .take(LINE_BYTES_MAX)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') && n as u64 == LINE_BYTES_MAX {
            bail!("a line is longer than {LINE_BYTES_MAX} bytes");
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        if messages > 0 {
            body.push(b',');
        }
        body.extend_from_slice(text);
        messages += 1;
    }
    if messages == 0 {
        return Ok(None);
    }
    body.extend_from_slice(b"]}");
    let mut request = Vec::with_capacity(head_prefix.len() + 32 + body.len());
    request.extend_from_slice(head_prefix.as_bytes());
    request.extend_from_slice(format!("{}\r\n\r\n", body.len()).as_bytes());
    request.extend_from_slice(&body);
    Ok(Some(Batch {
        request,
        body_bytes: body.len(),
        messages,
    }))
}

/// One client thread: takes batches until there are none, each over its own connection.
fn client(addr: SocketAddr, batches: &Mutex<Receiver<Batch>>, shared: &Shared) -> ClientReport {
    let mut report = ClientReport::default();
    let mut conn: Option<Conn> = None;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let next = batches.lock().expect("batch queue lock").recv();
        let Ok(batch) = next else { break };
        report.messages_sent += batch.messages as u64;
        report.body_bytes += batch.body_bytes as u64;
        let mut delivered = false;
        for _ in 0..TRIES_MAX {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match Conn::open(addr) {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        report.io_errors += 1;
                        report.first_error.get_or_insert(format!("connect: {e}"));
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    }
                },
            };
            let t = Instant::now();
            let resp = c.send(&batch.request);
            let elapsed = t.elapsed().as_micros() as u64;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    report.io_errors += 1;
                    report.first_error.get_or_insert(format!("request: {e}"));
                    conn = None;
                    continue;
                }
            };
            report.requests += 1;
            report.latencies_us.push(elapsed);
            *report.status.entry(resp.status).or_default() += 1;
            if resp.close {
                conn = None;
            }
            match resp.status {
                200 => {
                    let body: Value = serde_json::from_slice(&resp.body).unwrap_or_default();
                    let field = |k: &str| body.get(k).and_then(Value::as_u64).unwrap_or(0);
                    let (accepted, duplicates) = (field("accepted"), field("duplicates"));
                    let rejected = body
                        .get("rejected")
                        .and_then(Value::as_array)
                        .map_or(0, |r| r.len() as u64);
                    report.accepted += accepted;
                    report.duplicates += duplicates;
                    report.rejected += rejected;
                    report.acked_events += accepted + duplicates;
                    shared
                        .acked_events
                        .fetch_add(accepted + duplicates, Ordering::Relaxed);
                    if rejected > 0 && report.first_error.is_none() {
                        report.first_error =
                            Some(format!("rejected: {}", String::from_utf8_lossy(&resp.body)));
                    }
                    delivered = true;
                    break;
                }
                503 => {
                    let wait_ms = resp.retry_after_s.unwrap_or(0).saturating_mul(1000);
                    std::thread::sleep(Duration::from_millis(
                        wait_ms.clamp(10, RETRY_SLEEP_MS_MAX),
                    ));
                }
                status => {
                    report.first_error.get_or_insert(format!(
                        "HTTP {status}: {}",
                        String::from_utf8_lossy(&resp.body)
                    ));
                    break;
                }
            }
        }
        if !delivered {
            report.gave_up_batches += 1;
        }
    }
    report
}

/// A keep-alive HTTP/1.1 connection: one request at a time, no pipelining.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

struct Response {
    status: u16,
    retry_after_s: Option<u64>,
    close: bool,
    body: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Conn {
            writer: stream.try_clone()?,
            reader: BufReader::with_capacity(16 * 1024, stream),
        })
    }

    fn send(&mut self, request: &[u8]) -> std::io::Result<Response> {
        self.writer.write_all(request)?;
        read_response(&mut self.reader)
    }
}

fn read_response(r: &mut impl BufRead) -> std::io::Result<Response> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    let read_line = |r: &mut dyn BufRead, line: &mut String| -> std::io::Result<()> {
        line.clear();
        let n = r.take(HEADER_LINE_BYTES_MAX).read_line(line)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    };
    read_line(r, &mut line)?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut length = None;
    let mut retry_after_s = None;
    let mut close = line.starts_with("HTTP/1.0");
    for _ in 0..HEADERS_MAX {
        read_line(r, &mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            let length = length.ok_or_else(|| bad("response without Content-Length".into()))?;
            if length > RESPONSE_BODY_BYTES_MAX {
                return Err(bad(format!("response body of {length} bytes")));
            }
            let mut body = vec![0; length];
            r.read_exact(&mut body)?;
            return Ok(Response {
                status,
                retry_after_s,
                close,
                body,
            });
        }
        let Some((name, value)) = header.split_once(':') else {
            return Err(bad(format!("bad header {header:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse()
                    .map_err(|_| bad(format!("bad length {value:?}")))?,
            );
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after_s = value.parse().ok();
        } else if name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad(format!("unsupported transfer-encoding {value:?}")));
        }
    }
    Err(bad(format!("more than {HEADERS_MAX} response headers")))
}

/// `http://HOST:PORT[/]` to the address to connect to and the Host header.
fn parse_url(url: &str) -> Result<(SocketAddr, String)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--url must start with http:// (got {url:?})");
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') {
        bail!("--url is the server's base URL, without a path (got {url:?})");
    }
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {authority:?}"))?
        .next()
        .with_context(|| format!("{authority:?} resolves to no address"))?;
    Ok((addr, authority.to_string()))
}

/// Polls GET /health until it answers 200.
fn wait_ready(addr: SocketAddr, authority: &str, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    let request = format!("GET /health HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    loop {
        let answer = Conn::open(addr).and_then(|mut c| c.send(request.as_bytes()));
        match answer {
            Ok(r) if r.status == 200 => return Ok(()),
            other => {
                if Instant::now() >= deadline {
                    let why = match other {
                        Ok(r) => format!("HTTP {}", r.status),
                        Err(e) => e.to_string(),
                    };
                    bail!("http://{authority}/health did not answer 200 within {within:?}: {why}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The server's Prometheus counters and histogram sums and counts, labels dropped (one
/// project), e.g. `throughline_fsync_seconds_sum`.
fn server_metrics(addr: SocketAddr, authority: &str) -> Option<Value> {
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let resp = Conn::open(addr)
        .and_then(|mut c| c.send(request.as_bytes()))
        .ok()?;
    let text = String::from_utf8(resp.body).ok()?;
    let mut out = serde_json::Map::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = key.split('{').next().unwrap_or(key);
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        if name.ends_with("_bucket") {
            continue;
        }
        let sum = out.get(name).and_then(Value::as_f64).unwrap_or(0.0) + v;
        out.insert(name.to_string(), json!(sum));
    }
    Some(Value::Object(out))
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// /proc: what the server process uses

/// CPU seconds of this process and, if given, of the server and each of its threads.
struct ProcCpu {
    own: f64,
    server: f64,
    /// Thread id to (name, CPU seconds).
    server_threads: BTreeMap<u32, (String, f64)>,
}

impl ProcCpu {
    fn sample(server: Option<u32>) -> ProcCpu {
        let own = proc_cpu(Path::new("/proc/self/stat")).map_or(0.0, |(_, s)| s);
        let Some(pid) = server else {
            return ProcCpu {
                own,
                server: 0.0,
                server_threads: BTreeMap::new(),
            };
        };
        let task_dir = PathBuf::from(format!("/proc/{pid}/task"));
        let mut threads = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&task_dir) {
            for e in entries.flatten() {
                let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if let Some(t) = proc_cpu(&e.path().join("stat")) {
                    threads.insert(tid, t);
                }
            }
        }
        ProcCpu {
            own,
            server: proc_cpu(&PathBuf::from(format!("/proc/{pid}/stat"))).map_or(0.0, |(_, s)| s),
            server_threads: threads,
        }
    }
}

/// (name, user + system CPU seconds) from a `/proc/.../stat` file.
fn proc_cpu(stat: &Path) -> Option<(String, f64)> {
    let text = std::fs::read_to_string(stat).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text[open + 1..close].to_string();
    // After the name: state is field 3 of the file, utime 14 and stime 15.
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((name, ticks as f64 / PROC_TICKS_PER_SECOND))
}

/// Threads of one pool share a name up to a number: "tokio-runtime-w", "writer-web".
fn thread_group(name: &str) -> String {
    name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
        .to_string()
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Bytes the process caused to be written to storage (`/proc/PID/io` write_bytes).
fn proc_write_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

fn rss_sample(acked: u64, started: Instant, rss_kb: u64, window_max_kb: u64) -> Value {
    json!({
        "events": acked,
        "seconds": round3(started.elapsed().as_secs_f64()),
        "rss_mb": round3(rss_kb as f64 / 1024.0),
        "rss_max_mb": round3(window_max_kb as f64 / 1024.0),
    })
}

// ---------------------------------------------------------------------------------------

/// The value at quantile `q` of sorted `values` (nearest rank), 0 when empty.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn batches_join_lines_skip_blank_ones_and_stop_at_the_end() {
        let mut input = &b"{\"a\":1}\n\n{\"b\":2}\r\n{\"c\":3}"[..];
        let b = read_batch(&mut input, 2, "H: ").unwrap().unwrap();
        assert_eq!(b.messages, 2);
        let body = br#"{"batch":[{"a":1},{"b":2}]}"#;
        assert_eq!(b.body_bytes, body.len());
        assert_eq!(b.request, [&b"H: 27\r\n\r\n"[..], body].concat());
        let b = read_batch(&mut input, 2, "H: ").unwrap().unwrap();
        assert_eq!(b.messages, 1);
        assert!(read_batch(&mut input, 2, "H: ").unwrap().is_none());
    }

    #[test]
    fn responses_are_read_by_content_length_and_keep_alive() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 2\r\ncontent-length: 4\r\n\r\nbusyHTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
        let mut r = &raw[..];
        let a = read_response(&mut r).unwrap();
        assert_eq!(
            (a.status, a.retry_after_s, a.close, &a.body[..]),
            (503, Some(2), false, &b"busy"[..])
        );
        let b = read_response(&mut r).unwrap();
        assert_eq!((b.status, b.close, &b.body[..]), (200, true, &b"{}"[..]));
        assert!(read_response(&mut r).is_err());
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.50), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn urls_need_a_scheme_and_no_path() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/").unwrap().1,
            "127.0.0.1:8080"
        );
        assert!(parse_url("127.0.0.1:8080").is_err());
        assert!(parse_url("http://127.0.0.1:8080/v1").is_err());
    }

    #[test]
    fn thread_names_group_by_pool() {
        assert_eq!(thread_group("tokio-runtime-w"), "tokio-runtime-w");
        assert_eq!(thread_group("bench-client-12"), "bench-client");
        assert_eq!(thread_group("writer-web"), "writer-web");
    }
}
