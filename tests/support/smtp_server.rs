//! A real SMTP peer for tests: plain TCP on 127.0.0.1, speaking the subset
//! of RFC 5321 that a mail client needs (EHLO/HELO, MAIL, RCPT, DATA, RSET,
//! NOOP, QUIT) plus AUTH PLAIN and LOGIN (RFC 4954). No STARTTLS.
//!
//! It records every accepted message ([`ReceivedMail`]) and can be told to
//! refuse the next messages with a transient `451` ([`SmtpBehaviour`]) or to
//! require credentials ([`SmtpServer::require_auth`]). Dropping the server
//! stops it and cuts its open connections; [`SmtpServer::start_on`] brings
//! one back on the same port.
//!
//! Deliberate strictness, so that a misbehaving client shows up in tests:
//! HELO/EHLO must come first (`503`), paths need angle brackets (`501`), and
//! a line longer than 998 octets before its CRLF gets `500 5.5.2` (for a
//! message, after its end, and the message is not recorded). Leniency: bare
//! LF is taken as a line end; the DATA payload is stored with CRLF line ends
//! and decoded as UTF-8 lossily.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Longest line content accepted: 1000 octets with the CRLF (RFC 5321 §4.5.3.1.6).
const MAX_LINE: usize = 998;
/// Largest DATA payload kept; beyond it the message gets `552`.
const MAX_MESSAGE: usize = 32 * 1024 * 1024;

/// A message the server accepted (answered `250` to its DATA).
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// Reverse-path of `MAIL FROM`, without the angle brackets (empty for `<>`).
    pub from: String,
    /// Forward-paths of every accepted `RCPT TO`, in order.
    pub to: Vec<String>,
    /// The DATA payload, dot-unstuffed, CRLF line ends kept, without the final `.\r\n`.
    pub data: String,
    /// `(user, password)` when the client authenticated on this connection.
    pub auth: Option<(String, String)>,
}

impl ReceivedMail {
    /// Value of the first header with this name (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let mut found: Option<String> = None;
        for line in self.data.split("\r\n") {
            if line.is_empty() {
                break; // end of the header section
            }
            if line.starts_with([' ', '\t']) {
                // Continuation: unfolding removes the CRLF and keeps the whitespace.
                if let Some(value) = found.as_mut() {
                    value.push_str(line);
                }
                continue;
            }
            if found.is_some() {
                break;
            }
            if let Some((field, value)) = line.split_once(':')
                && field.trim_end().eq_ignore_ascii_case(name)
            {
                found = Some(value.to_string());
            }
        }
        found.map(|v| v.trim().to_string())
    }
}

/// How the server answers the end of a message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SmtpBehaviour {
    /// `250 2.0.0 queued as <n>` and record the message.
    Accept,
    /// Answer `451 4.3.0` to DATA's end (after the message) for the next n messages, then accept.
    TempFailNext(u32),
}

#[derive(Debug)]
struct State {
    behaviour: SmtpBehaviour,
    credentials: Option<(String, String)>,
    received: Vec<ReceivedMail>,
    refused: u32,
    queued: u64,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking test thread must not take the server down with it.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An SMTP server on a local port, serving until dropped.
pub struct SmtpServer {
    pub addr: SocketAddr,
    state: Shared,
    task: JoinHandle<()>,
}

impl SmtpServer {
    /// Binds 127.0.0.1:0 and serves until dropped.
    pub async fn start() -> SmtpServer {
        SmtpServer::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Binds a given address (to "come back" on the same port after being
    /// down). Retries for up to 2 s while the port is still held, e.g. by a
    /// just-dropped server whose task has not been torn down yet.
    pub async fn start_on(addr: SocketAddr) -> SmtpServer {
        let deadline = Instant::now() + Duration::from_secs(2);
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("smtp test server: bind {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().expect("smtp test server: local addr");
        let state = Arc::new(Mutex::new(State {
            behaviour: SmtpBehaviour::Accept,
            credentials: None,
            received: Vec::new(),
            refused: 0,
            queued: 0,
        }));
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        SmtpServer { addr, state, task }
    }

    pub fn set_behaviour(&self, b: SmtpBehaviour) {
        lock(&self.state).behaviour = b;
    }

    /// Require AUTH (PLAIN and LOGIN offered in EHLO) with these credentials;
    /// MAIL before a successful AUTH gets 530.
    pub fn require_auth(&self, user: &str, password: &str) {
        lock(&self.state).credentials = Some((user.to_string(), password.to_string()));
    }

    /// Every message accepted so far, in arrival order.
    pub fn received(&self) -> Vec<ReceivedMail> {
        lock(&self.state).received.clone()
    }

    /// Waits (polling every 20 ms) until at least n messages arrived or the
    /// timeout passes; returns what arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received();
            if received.len() >= n || Instant::now() >= deadline {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many times a message was refused by `TempFailNext`.
    pub fn refused(&self) -> u32 {
        lock(&self.state).refused
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        // The accept task owns the listener and the connection tasks (a
        // JoinSet): aborting it closes the port and cuts every connection.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Shared) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, peer)) => {
                let state = state.clone();
                connections.spawn(async move {
                    if let Err(e) = session(stream, &state).await {
                        eprintln!("smtp test server: {peer}: connection dropped: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("smtp test server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

enum Line {
    Text(String),
    TooLong,
}

/// Reads one line (CRLF or bare LF), without its terminator. `None` at end
/// of input. A too-long line is consumed up to its end but not kept.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> io::Result<Option<Line>> {
    let mut buf = Vec::new();
    let mut too_long = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(None); // closed, possibly mid-line: nothing to answer
        }
        let (end, consumed) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (Some(i), i + 1),
            None => (None, chunk.len()),
        };
        if !too_long {
            buf.extend_from_slice(&chunk[..end.unwrap_or(consumed)]);
            // One octet of slack for a CR that the LF has not followed yet.
            if buf.len() > MAX_LINE + 1 {
                too_long = true;
                buf = Vec::new();
            }
        }
        reader.consume(consumed);
        if end.is_some() {
            break;
        }
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    if too_long || buf.len() > MAX_LINE {
        return Ok(Some(Line::TooLong));
    }
    Ok(Some(Line::Text(String::from_utf8_lossy(&buf).into_owned())))
}

async fn reply(writer: &mut OwnedWriteHalf, text: &str) -> io::Result<()> {
    writer.write_all(format!("{text}\r\n").as_bytes()).await
}

/// One connection's protocol state.
#[derive(Default)]
struct Session {
    /// `Some(true)` after EHLO, `Some(false)` after HELO.
    greeted: Option<bool>,
    auth: Option<(String, String)>,
    from: Option<String>,
    to: Vec<String>,
}

impl Session {
    fn reset(&mut self) {
        self.from = None;
        self.to.clear();
    }
}

async fn session(stream: TcpStream, state: &Mutex<State>) -> io::Result<()> {
    let (read, mut writer) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut s = Session::default();
    reply(&mut writer, "220 localhost ESMTP test").await?;
    loop {
        let line = match read_line(&mut reader).await? {
            None => return Ok(()),
            Some(Line::TooLong) => {
                reply(&mut writer, "500 5.5.2 Line too long").await?;
                continue;
            }
            Some(Line::Text(line)) => line,
        };
        let (verb, arg) = match line.split_once(' ') {
            Some((verb, arg)) => (verb.to_ascii_uppercase(), arg.trim()),
            None => (line.trim().to_ascii_uppercase(), ""),
        };
        match verb.as_str() {
            "EHLO" | "HELO" if arg.is_empty() => {
                reply(&mut writer, &format!("501 5.5.4 Syntax: {verb} hostname")).await?;
            }
            "EHLO" => {
                s.reset();
                s.greeted = Some(true);
                let auth = lock(state).credentials.is_some();
                let mut text = String::from("250-localhost\r\n250-8BITMIME\r\n");
                text.push_str("250-ENHANCEDSTATUSCODES\r\n");
                if auth {
                    text.push_str("250-AUTH PLAIN LOGIN\r\n");
                }
                text.push_str("250 SMTPUTF8");
                reply(&mut writer, &text).await?;
            }
            "HELO" => {
                s.reset();
                s.greeted = Some(false);
                reply(&mut writer, "250 localhost").await?;
            }
            "AUTH" => {
                let answer = auth(&mut s, arg, state, &mut reader, &mut writer).await?;
                reply(&mut writer, &answer).await?;
            }
            "MAIL" => {
                let answer = mail(&mut s, arg, state);
                reply(&mut writer, &answer).await?;
            }
            "RCPT" => {
                let answer = if s.from.is_none() {
                    "503 5.5.1 Need MAIL command".to_string()
                } else {
                    match path_arg(arg, "TO:") {
                        Some(to) if !to.is_empty() => {
                            s.to.push(to);
                            "250 2.1.5 Ok".to_string()
                        }
                        _ => "501 5.5.4 Syntax: RCPT TO:<address>".to_string(),
                    }
                };
                reply(&mut writer, &answer).await?;
            }
            "DATA" => {
                if s.to.is_empty() {
                    reply(&mut writer, "503 5.5.1 Need RCPT command").await?;
                    continue;
                }
                reply(&mut writer, "354 End data with <CR><LF>.<CR><LF>").await?;
                let answer = match read_data(&mut reader).await? {
                    None => return Ok(()), // closed before the end of the message
                    Some(Err(refusal)) => refusal.to_string(),
                    Some(Ok(data)) => finish_message(&mut s, data, state),
                };
                s.reset();
                reply(&mut writer, &answer).await?;
            }
            "RSET" => {
                s.reset();
                reply(&mut writer, "250 2.0.0 Ok").await?;
            }
            "NOOP" => reply(&mut writer, "250 2.0.0 Ok").await?,
            "QUIT" => {
                reply(&mut writer, "221 2.0.0 Bye").await?;
                return writer.shutdown().await;
            }
            _ => reply(&mut writer, "500 5.5.1 Command unrecognized").await?,
        }
    }
}

/// Parses `FROM:<path> [params]` / `TO:<path> [params]`: the path without
/// brackets. Parameters (`SIZE=`, `BODY=8BITMIME`, …) are accepted and ignored.
fn path_arg(arg: &str, keyword: &str) -> Option<String> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start().strip_prefix('<')?;
    let (path, params) = rest.split_once('>')?;
    let params_ok = params.is_empty() || params.starts_with(' ');
    let well_formed = params.split_whitespace().all(|p| {
        let key = p.split_once('=').map_or(p, |(k, _)| k);
        !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    (params_ok && well_formed && !path.contains(['<', ' '])).then(|| path.to_string())
}

fn mail(s: &mut Session, arg: &str, state: &Mutex<State>) -> String {
    if s.greeted.is_none() {
        return "503 5.5.1 Send HELO/EHLO first".into();
    }
    if lock(state).credentials.is_some() && s.auth.is_none() {
        return "530 5.7.0 Authentication required".into();
    }
    if s.from.is_some() {
        return "503 5.5.1 Nested MAIL command".into();
    }
    match path_arg(arg, "FROM:") {
        Some(from) => {
            s.from = Some(from);
            "250 2.1.0 Ok".into()
        }
        None => "501 5.5.4 Syntax: MAIL FROM:<address>".into(),
    }
}

/// Reads the message after `354` up to the line ".". `None` if the client
/// went away; `Some(Err(reply))` if the message is refused for its form.
async fn read_data<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> io::Result<Option<Result<String, &'static str>>> {
    let mut data = String::new();
    let mut refusal = None;
    loop {
        let line = match read_line(reader).await? {
            None => return Ok(None),
            Some(Line::TooLong) => {
                refusal.get_or_insert("500 5.5.2 Line too long");
                continue;
            }
            Some(Line::Text(line)) => line,
        };
        if line == "." {
            return Ok(Some(match refusal {
                Some(refusal) => Err(refusal),
                None => Ok(data),
            }));
        }
        if refusal.is_some() {
            continue;
        }
        // Undo dot-stuffing (RFC 5321 §4.5.2).
        let line = line.strip_prefix('.').unwrap_or(&line);
        if data.len() + line.len() + 2 > MAX_MESSAGE {
            refusal = Some("552 5.3.4 Message too big");
            data = String::new();
            continue;
        }
        data.push_str(line);
        data.push_str("\r\n");
    }
}

fn finish_message(s: &mut Session, data: String, state: &Mutex<State>) -> String {
    let mut state = lock(state);
    if let SmtpBehaviour::TempFailNext(n) = state.behaviour
        && n > 0
    {
        state.behaviour = match n - 1 {
            0 => SmtpBehaviour::Accept,
            left => SmtpBehaviour::TempFailNext(left),
        };
        state.refused += 1;
        return "451 4.3.0 Temporary failure, try again later".into();
    }
    state.queued += 1;
    state.received.push(ReceivedMail {
        from: s.from.take().unwrap_or_default(),
        to: std::mem::take(&mut s.to),
        data,
        auth: s.auth.clone(),
    });
    format!("250 2.0.0 queued as {}", state.queued)
}

/// Runs an AUTH exchange; returns the final reply (235, 535, 5xx).
async fn auth<R: AsyncBufRead + Unpin>(
    s: &mut Session,
    arg: &str,
    state: &Mutex<State>,
    reader: &mut R,
    writer: &mut OwnedWriteHalf,
) -> io::Result<String> {
    let Some(expected) = lock(state).credentials.clone() else {
        return Ok("503 5.5.1 Error: authentication not enabled".into());
    };
    if s.greeted != Some(true) {
        return Ok("503 5.5.1 Send EHLO first".into());
    }
    if s.auth.is_some() {
        return Ok("503 5.5.1 Already authenticated".into());
    }
    if s.from.is_some() {
        return Ok("503 5.5.1 AUTH not allowed during a mail transaction".into());
    }
    let (mechanism, initial) = match arg.split_once(' ') {
        Some((m, i)) => (m.to_ascii_uppercase(), Some(i.trim().to_string())),
        None => (arg.to_ascii_uppercase(), None),
    };
    let credentials = match mechanism.as_str() {
        "PLAIN" => {
            let response = match initial {
                Some(response) => response,
                None => match challenge(reader, writer, "334 ").await? {
                    Ok(response) => response,
                    Err(refusal) => return Ok(refusal.into()),
                },
            };
            let Some(decoded) = decode_text(&response) else {
                return Ok("501 5.5.2 Cannot decode response".into());
            };
            // authzid NUL authcid NUL passwd
            let mut parts = decoded.splitn(3, '\0');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(_), Some(user), Some(password)) => (user.to_string(), password.to_string()),
                _ => return Ok("501 5.5.2 Malformed PLAIN response".into()),
            }
        }
        "LOGIN" => {
            let user = match initial {
                Some(response) => response,
                None => match challenge(reader, writer, "334 VXNlcm5hbWU6").await? {
                    Ok(response) => response,
                    Err(refusal) => return Ok(refusal.into()),
                },
            };
            let password = match challenge(reader, writer, "334 UGFzc3dvcmQ6").await? {
                Ok(response) => response,
                Err(refusal) => return Ok(refusal.into()),
            };
            match (decode_text(&user), decode_text(&password)) {
                (Some(user), Some(password)) => (user, password),
                _ => return Ok("501 5.5.2 Cannot decode response".into()),
            }
        }
        _ => return Ok("504 5.5.4 Unrecognized authentication type".into()),
    };
    if credentials == expected {
        s.auth = Some(credentials);
        Ok("235 2.7.0 Authentication successful".into())
    } else {
        Ok("535 5.7.8 Authentication credentials invalid".into())
    }
}

/// Sends a `334` challenge and reads the client's answer line.
async fn challenge<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    writer: &mut OwnedWriteHalf,
    prompt: &str,
) -> io::Result<Result<String, &'static str>> {
    reply(writer, prompt).await?;
    match read_line(reader).await? {
        None => Err(io::ErrorKind::UnexpectedEof.into()),
        Some(Line::TooLong) => Ok(Err("500 5.5.2 Line too long")),
        Some(Line::Text(line)) if line.trim() == "*" => {
            Ok(Err("501 5.0.0 Authentication cancelled"))
        }
        Some(Line::Text(line)) => Ok(Ok(line.trim().to_string())),
    }
}

/// Base64 to UTF-8 text; `=` alone is the empty response (RFC 4954).
fn decode_text(encoded: &str) -> Option<String> {
    if encoded == "=" {
        return Some(String::new());
    }
    String::from_utf8(base64_decode(encoded)?).ok()
}

/// Standard-alphabet base64 with optional padding; `None` if malformed.
fn base64_decode(encoded: &str) -> Option<Vec<u8>> {
    let body = encoded.trim_end_matches('=');
    let padding = encoded.len() - body.len();
    if padding > 2 || (padding > 0 && !encoded.len().is_multiple_of(4)) || body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in body.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}
