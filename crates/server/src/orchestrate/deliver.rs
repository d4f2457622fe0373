//! Delivery workers: a fixed pool of threads that carry out rendered sends (SMTP through
//! `lettre`, signed webhooks through `ureq`, audience rows appended to a CSV file) and
//! hand each outcome back to its project's runtime to be journaled.
//!
//! Bounded: the job queue holds [`QUEUE_JOBS_MAX`] jobs (a full queue blocks the project
//! loop, which stops ticking); a webhook waits at most `webhook_timeout_ms`, an SMTP
//! session `smtp.timeout_ms`. Classification: 2xx delivered; 408, 409, 425, 429, 5xx,
//! timeouts and connection failures are retried; other answers fail for good. SMTP errors
//! are retried when transient (4xx), permanent (5xx) otherwise.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use throughline_orchestrate::machine::{Input, Outcome};

use super::{OrchestrateConfig, ProjectRuntime, SmtpConfig};

pub const QUEUE_JOBS_MAX: usize = 10_000;
/// Bytes of a receiver's answer kept in the outcome.
const DETAIL_BYTES_MAX: usize = 200;

pub struct Job {
    pub project: String,
    pub key: String,
    pub attempt: u32,
    pub what: What,
}

pub enum What {
    Email(Email),
    Webhook {
        url: String,
        id: String,
        body: Vec<u8>,
        secret: Vec<u8>,
    },
    Csv {
        path: PathBuf,
        header: String,
        line: String,
        key: String,
    },
}

pub struct Email {
    pub from: String,
    pub to: String,
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
    pub message_id: String,
    pub unsubscribe_url: String,
    pub key: String,
}

pub struct Pool {
    tx: Mutex<Option<SyncSender<Job>>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    projects: Arc<RwLock<HashMap<String, Weak<ProjectRuntime>>>>,
    busy: Arc<AtomicUsize>,
}

struct Shared {
    agent: ureq::Agent,
    smtp: Option<SmtpConfig>,
    csv: Mutex<HashMap<PathBuf, HashSet<String>>>,
    projects: Arc<RwLock<HashMap<String, Weak<ProjectRuntime>>>>,
    busy: Arc<AtomicUsize>,
}

impl Pool {
    pub fn start(config: &OrchestrateConfig, _data: &Path) -> Pool {
        let (tx, rx) = sync_channel::<Job>(QUEUE_JOBS_MAX);
        let rx = Arc::new(Mutex::new(rx));
        let projects: Arc<RwLock<HashMap<String, Weak<ProjectRuntime>>>> = Arc::default();
        let busy = Arc::new(AtomicUsize::new(0));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(config.webhook_timeout_ms)))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        let shared = Arc::new(Shared {
            agent,
            smtp: config.smtp.clone(),
            csv: Mutex::new(HashMap::new()),
            projects: projects.clone(),
            busy: busy.clone(),
        });
        let workers = (0..config.workers.max(1))
            .map(|n| {
                let (rx, shared) = (rx.clone(), shared.clone());
                std::thread::Builder::new()
                    .name(format!("deliver-{n}"))
                    .spawn(move || work(&rx, &shared))
                    .expect("a delivery thread")
            })
            .collect();
        Pool {
            tx: Mutex::new(Some(tx)),
            workers: Mutex::new(workers),
            projects,
            busy,
        }
    }

    pub fn register(&self, rt: Arc<ProjectRuntime>) {
        self.projects
            .write()
            .expect("projects")
            .insert(rt.name.clone(), Arc::downgrade(&rt));
    }

    pub fn send(&self, job: Job) {
        self.busy.fetch_add(1, Ordering::Relaxed);
        let tx = self.tx.lock().expect("pool sender").clone();
        if let Some(tx) = tx {
            if tx.send(job).is_err() {
                self.busy.fetch_sub(1, Ordering::Relaxed);
            }
        } else {
            self.busy.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether jobs are queued or running.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed) > 0
    }

    /// Lets the workers finish what is queued, then stops them.
    pub fn shutdown(&self) {
        self.tx.lock().expect("pool sender").take();
        for h in self.workers.lock().expect("workers").drain(..) {
            let _ = h.join();
        }
    }
}

fn work(rx: &Mutex<Receiver<Job>>, shared: &Shared) {
    loop {
        let job = {
            let rx = rx.lock().expect("pool receiver");
            rx.recv()
        };
        let Ok(job) = job else { return };
        let outcome = match &job.what {
            What::Webhook {
                url,
                id,
                body,
                secret,
            } => webhook(&shared.agent, url, id, body, secret),
            What::Email(e) => match &shared.smtp {
                Some(cfg) => smtp(cfg, e),
                None => Outcome::Failed {
                    retryable: false,
                    error: "no [orchestrate.smtp] server is configured".into(),
                },
            },
            What::Csv {
                path,
                header,
                line,
                key,
            } => csv(shared, path, header, line, key),
        };
        let rt = shared
            .projects
            .read()
            .expect("projects")
            .get(&job.project)
            .and_then(Weak::upgrade);
        if let Some(rt) = rt {
            match &outcome {
                Outcome::Delivered { .. } => rt.stats.delivered.fetch_add(1, Ordering::Relaxed),
                Outcome::Failed { .. } => rt.stats.failed_attempts.fetch_add(1, Ordering::Relaxed),
            };
            rt.results.lock().expect("results").push(Input::Delivered {
                key: job.key,
                attempt: job.attempt,
                outcome,
            });
        }
        shared.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

fn clip(s: &str) -> String {
    let mut end = s.len().min(DETAIL_BYTES_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// One Standard Webhooks delivery.
pub fn webhook(agent: &ureq::Agent, url: &str, id: &str, body: &[u8], secret: &[u8]) -> Outcome {
    let ts = throughline_store::now_ms() / 1000;
    let sig = throughline_orchestrate::webhook::signature(secret, id, ts, body);
    let r = agent
        .post(url)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("throughline/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .send(body);
    match r {
        Ok(resp) => {
            let status = resp.status().as_u16();
            if (200..300).contains(&status) {
                Outcome::Delivered {
                    detail: status.to_string(),
                }
            } else {
                let retryable = matches!(status, 408 | 409 | 425 | 429) || status >= 500;
                Outcome::Failed {
                    retryable,
                    error: format!("HTTP {status}"),
                }
            }
        }
        Err(e) => Outcome::Failed {
            retryable: true,
            error: clip(&e.to_string()),
        },
    }
}

fn smtp(cfg: &SmtpConfig, e: &Email) -> Outcome {
    use lettre::message::header::{HeaderName, HeaderValue};
    use lettre::message::{Mailbox, MultiPart, SinglePart};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{Message, SmtpTransport, Transport};
    let fail = |retryable: bool, error: String| Outcome::Failed {
        retryable,
        error: clip(&error),
    };
    let from: Mailbox = match e.from.parse() {
        Ok(m) => m,
        Err(err) => return fail(false, format!("from {:?}: {err}", e.from)),
    };
    let to: Mailbox = match e.to.parse() {
        Ok(m) => m,
        Err(err) => return fail(false, format!("to {:?}: {err}", e.to)),
    };
    let mut b = Message::builder()
        .from(from)
        .to(to)
        .subject(e.subject.clone())
        .message_id(Some(e.message_id.clone()));
    b = b.raw_header(HeaderValue::new(
        HeaderName::new_from_ascii_str("List-Unsubscribe"),
        format!("<{}>", e.unsubscribe_url),
    ));
    b = b.raw_header(HeaderValue::new(
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
        "List-Unsubscribe=One-Click".to_string(),
    ));
    b = b.raw_header(HeaderValue::new(
        HeaderName::new_from_ascii_str("X-Throughline-Key"),
        e.key.clone(),
    ));
    let msg = match (&e.html, &e.text) {
        (Some(h), Some(t)) => b.multipart(MultiPart::alternative_plain_html(t.clone(), h.clone())),
        (Some(h), None) => b.singlepart(SinglePart::html(h.clone())),
        (None, Some(t)) => b.singlepart(SinglePart::plain(t.clone())),
        (None, None) => return fail(false, "an email without a body".into()),
    };
    let msg = match msg {
        Ok(m) => m,
        Err(err) => return fail(false, err.to_string()),
    };
    let builder = match cfg.tls.as_str() {
        "none" => Ok(SmtpTransport::builder_dangerous(&cfg.host)),
        "tls" => SmtpTransport::relay(&cfg.host),
        _ => SmtpTransport::starttls_relay(&cfg.host),
    };
    let mut builder = match builder {
        Ok(b) => b
            .port(cfg.port)
            .timeout(Some(Duration::from_millis(cfg.timeout_ms))),
        Err(err) => return fail(true, err.to_string()),
    };
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        builder = builder.credentials(Credentials::new(u.clone(), p.clone()));
    }
    match builder.build().send(&msg) {
        Ok(resp) => Outcome::Delivered {
            detail: clip(&format!(
                "{} {}",
                resp.code(),
                resp.message().collect::<Vec<_>>().join(" ")
            )),
        },
        Err(err) => fail(!err.is_permanent(), err.to_string()),
    }
}

fn csv(shared: &Shared, path: &Path, header: &str, line: &str, key: &str) -> Outcome {
    let mut files = shared.csv.lock().expect("csv files");
    let fail = |e: std::io::Error| Outcome::Failed {
        retryable: true,
        error: format!("{}: {e}", path.display()),
    };
    if !files.contains_key(path) {
        // The keys already written, so a send repeated after a crash adds no second row.
        let mut keys = HashSet::new();
        if let Ok(text) = std::fs::read_to_string(path) {
            for l in text.lines().skip(1) {
                if let Some(k) = l.split(',').nth(1) {
                    keys.insert(k.to_string());
                }
            }
        }
        files.insert(path.to_path_buf(), keys);
    }
    let keys = files.get_mut(path).expect("inserted");
    if keys.contains(key) {
        return Outcome::Delivered {
            detail: "already exported".into(),
        };
    }
    if let Some(dir) = path.parent() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return fail(e);
        }
    }
    let new = !path.exists();
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| {
            if new {
                f.write_all(header.as_bytes())?;
            }
            f.write_all(line.as_bytes())?;
            f.sync_data()
        });
    match r {
        Ok(()) => {
            keys.insert(key.to_string());
            Outcome::Delivered {
                detail: path.display().to_string(),
            }
        }
        Err(e) => fail(e),
    }
}
