// Build by hand (from examples/): rustc --edition 2021 --crate-type cdylib --crate-name echo_rust -O -C panic=abort -C strip=debuginfo -C link-arg=-Wl,-z,undefs -o out/libecho_rust.so echo-rust/src/lib.rs
//
// echo-rust — a *plugin-driven* dlhost plugin in Rust, std only.
//
// The host functions of dlhost.h are declared `extern "C"` below and are not
// linked in: they stay undefined in libecho_rust.so and the dynamic loader
// resolves them at dlopen time against the dlhost addon, which makes them
// globally visible before it loads a plugin. `-C link-arg=-Wl,-z,undefs`
// states that explicitly (rustc does not pass `-z defs` today, but a linker or
// a distribution default that did would reject the library). Note that rustc
// links with `-z now`: the host symbols must exist at dlopen time even with
// RTLD_LAZY - which they do under dlhost.
//
// Threads: N pollers (cfg "threads=N" or {"threads":N}, default 2, at most
// 64), all detached. Each polls with dlhost_task_poll until it returns NULL.
// The runtime's state is an Arc held by every thread; the last one out frees
// it. Before dlhost dlclose()s the library it waits until a poll has returned
// the end of the queue and every thread that ever polled it has *exited* -
// which covers the code std runs after our closure returns (the thread's
// packet, thread-local destructors, and std's own pthread-key destructor,
// which may run after any destructor the host registered: the host must wait
// for the thread to be really gone). The host only knows a thread once it
// has polled, so no thread leaves before all its siblings have seen the end
// of the queue too (Runtime::leave, an exit barrier).
//
// What std::thread costs a library that is meant to be unloaded:
//  1. std::thread::spawn touches thread-locals of the *calling* thread (the
//     spawn-hook list) and so registers a thread-local destructor, owned by
//     this library, for that thread (__cxa_thread_atexit_impl). glibc never
//     unmaps a library while a thread still has such a destructor pending.
//     dlhost calls dlhost_init on the library's owner thread, which exits
//     before the final dlclose; a host that calls init on a thread that
//     lives as long as the process would have libecho_rust.so pinned for
//     ever (dlclose silently keeps it mapped). So, for any host, dlhost_init
//     touches no thread-local: it starts one bootstrap poller with plain
//     pthread_create, and that thread spawns the others. Its destructors run
//     when it exits, before dlhost sees it gone.
//  2. A std::thread (or any thread that calls thread::current()) makes std
//     create a pthread key (thread-local cleanup) that is never deleted, one
//     per load of the library. A process has 1024 keys: after about a
//     thousand load/unload cycles std aborts the process ("fatal runtime
//     error: out of TLS keys"). For unbounded reload loops, put "raw-threads"
//     in the cfg: every poller is then a plain pthread running Rust code, no
//     std::thread anywhere, nothing leaks. (Or load with isolate: 'process'.)
//
// Behaviour (relied on by tests, demos and benchmarks; identical in every
// example plugin):
//   "fail:N"   rc = N (decimal, optional sign; no digits -> 1), body "failed"
//   "cfg"      the cfg the runtime was initialised with, byte for byte
//   "version"  PLUGIN_VERSION, read from the environment at *compile* time
//              (PLUGIN_VERSION=2 rustc ...), default "1"
//   "count"    decimal number of requests this runtime has handled, this one
//              included
//   "pid"      decimal process id
//   "sleep:N"  sleeps N milliseconds (at most one hour), then echoes
//   anything else, including the empty request: echoed byte for byte
// cfg "raw-threads": pollers 2..N are plain pthreads instead of std::threads.
// dlhost_init returns 7 (ERR_INIT_FAILED, no thread started) when the cfg
// contains "fail-init", and 2 when the host speaks another ABI version.
//
// A panic aborts the process (panic=abort): a plugin must never unwind into
// the host, and this one does not panic on any input.

use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

/// DLHOST_ABI_VERSION of the dlhost.h this plugin was written against.
const DLHOST_ABI_VERSION: c_uint = 1;
const VERSION: &str = match option_env!("PLUGIN_VERSION") {
    Some(v) => v,
    None => "1",
};
const MAX_THREADS: i64 = 64;
const ENOMEM: c_int = 12;
const EAGAIN: c_int = 11;

/// Opaque host types (dlhost_queue, dlhost_task): only ever behind pointers.
#[repr(C)]
pub struct DlhostQueue {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct DlhostTask {
    _opaque: [u8; 0],
}

// The host ABI (dlhost.h), resolved at dlopen time.
extern "C" {
    fn dlhost_abi_version() -> c_uint;
    fn dlhost_task_poll(q: *mut DlhostQueue) -> *mut DlhostTask;
    fn dlhost_task_request(t: *mut DlhostTask, len: *mut usize) -> *const c_void;
    fn dlhost_task_respond(t: *mut DlhostTask, rc: c_int, rsp: *mut c_void, len: usize);
}
// From libc. The response must come from the C allocator: the host free()s it.
extern "C" {
    fn malloc(size: usize) -> *mut c_void;
    fn pthread_create(
        thread: *mut PthreadT,
        attr: *const c_void,
        start: extern "C" fn(*mut c_void) -> *mut c_void,
        arg: *mut c_void,
    ) -> c_int;
    fn pthread_detach(thread: PthreadT) -> c_int;
}
type PthreadT = std::ffi::c_ulong; // glibc's pthread_t

/// The queue pointer, shared by the pool threads. dlhost allows any number
/// of threads to poll one queue at once.
struct Queue(*mut DlhostQueue);
unsafe impl Send for Queue {}
unsafe impl Sync for Queue {}

struct ExitCount {
    wanted: u32,   // pollers asked for by the cfg
    started: u32,  // pollers running (the bootstrap thread included)
    finished: u32, // pollers that saw the end of the queue
}

/// One runtime, shared (Arc) by the threads that serve it.
struct Runtime {
    q: Queue,     // valid until a poll returns NULL
    cfg: Vec<u8>, // private copy: the host's cfg dies after init
    raw_threads: bool,
    calls: AtomicU64,
    exit: Mutex<ExitCount>,
    cv: Condvar,
}

// ---------------------------------------------------------------- helpers

/// Decimal number at the start of s: optional sign, then digits, stops at the
/// first non-digit, clamped to [lo, hi]; `dflt` when there is no digit.
fn parse_num(s: &[u8], lo: i64, hi: i64, dflt: i64) -> i64 {
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    let mut any = false;
    for &c in digits.iter().take_while(|c| c.is_ascii_digit()) {
        any = true;
        v = v.saturating_mul(10).saturating_add(i64::from(c - b'0'));
    }
    if !any {
        return dflt;
    }
    (if neg { -v } else { v }).clamp(lo, hi)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The number after `key` in the cfg ("threads=4", "threads: 4", {"threads":4}):
/// the first occurrence of `key` followed by a number (so "raw-threads" is
/// not taken for "threads").
fn cfg_num(cfg: &[u8], key: &[u8], lo: i64, hi: i64, dflt: i64) -> i64 {
    let mut from = 0;
    while let Some(at) = find(&cfg[from..], key) {
        let rest = &cfg[from + at + key.len()..];
        let skip = rest.iter().take_while(|c| b"\"'=: \t".contains(c)).count();
        let v = parse_num(&rest[skip..], lo, hi, i64::MIN);
        if v != i64::MIN {
            return v;
        }
        from += at + key.len();
    }
    dflt
}

/// A malloc'd, NUL-terminated copy of `body` (NULL for an empty answer).
fn to_malloc(body: &[u8]) -> Option<*mut c_void> {
    if body.is_empty() {
        return Some(std::ptr::null_mut());
    }
    unsafe {
        let p = malloc(body.len() + 1) as *mut u8;
        if p.is_null() {
            return None;
        }
        std::ptr::copy_nonoverlapping(body.as_ptr(), p, body.len());
        *p.add(body.len()) = 0;
        Some(p as *mut c_void)
    }
}

// ---------------------------------------------------------------- runtime

impl Runtime {
    fn lock(&self) -> MutexGuard<'_, ExitCount> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answers one task, exactly once.
    fn serve(&self, t: *mut DlhostTask) {
        let mut len = 0usize;
        let p = unsafe { dlhost_task_request(t, &mut len) } as *const u8;
        // Host-owned, valid until we respond.
        let req: &[u8] = if p.is_null() || len == 0 {
            &[]
        } else {
            unsafe { std::slice::from_raw_parts(p, len) }
        };
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let mut rc: c_int = 0;
        let tmp: String;
        let body: &[u8] = if let Some(num) = req.strip_prefix(b"fail:") {
            rc = parse_num(num, i64::from(c_int::MIN), i64::from(c_int::MAX), 1) as c_int;
            b"failed"
        } else if req == b"cfg" {
            &self.cfg
        } else if req == b"version" {
            VERSION.as_bytes()
        } else if req == b"count" {
            tmp = n.to_string();
            tmp.as_bytes()
        } else if req == b"pid" {
            tmp = std::process::id().to_string();
            tmp.as_bytes()
        } else if let Some(ms) = req.strip_prefix(b"sleep:") {
            thread::sleep(Duration::from_millis(parse_num(ms, 0, 3_600_000, 0) as u64));
            req
        } else {
            req // echo
        };
        let (rsp, rsp_len) = match to_malloc(body) {
            Some(rsp) => (rsp, body.len()),
            None => {
                rc = ENOMEM;
                (std::ptr::null_mut(), 0)
            }
        };
        // The host takes ownership of rsp and frees it; t is gone after this.
        unsafe { dlhost_task_respond(t, rc, rsp, rsp_len) };
    }

    /// Exit barrier: wait until every thread has seen the end of the queue,
    /// so every thread has polled (and is known to the host) before any one
    /// exits.
    fn leave(&self) {
        let mut g = self.lock();
        g.finished += 1;
        if g.finished == g.started {
            self.cv.notify_all();
        }
        while g.finished < g.started {
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A pool thread, with its own reference to the runtime.
fn worker(rt: Arc<Runtime>) {
    loop {
        // NULL: the runtime is unloading and every task queued before the
        // unload has been taken. The queue must not be touched again.
        let t = unsafe { dlhost_task_poll(rt.q.0) };
        if t.is_null() {
            break;
        }
        rt.serve(t);
    }
    rt.leave();
    // Dropping `rt` here; the last thread out frees the Runtime.
}

/// Starts `start` on a plain, detached pthread with its own reference to the
/// runtime. False when no thread could be created.
fn spawn_raw(start: extern "C" fn(*mut c_void) -> *mut c_void, rt: &Arc<Runtime>) -> bool {
    let arg = Arc::into_raw(Arc::clone(rt)) as *mut c_void;
    let mut tid: PthreadT = 0;
    unsafe {
        if pthread_create(&mut tid, std::ptr::null(), start, arg) != 0 {
            drop(Arc::from_raw(arg as *const Runtime));
            return false;
        }
        pthread_detach(tid);
    }
    true
}

/// A poller on a plain pthread; `arg` comes from spawn_raw.
extern "C" fn raw_worker(arg: *mut c_void) -> *mut c_void {
    worker(unsafe { Arc::from_raw(arg as *const Runtime) });
    std::ptr::null_mut()
}

/// The first poller (a plain pthread, see the top of the file): starts the
/// others, then polls too. `arg` comes from spawn_raw.
extern "C" fn bootstrap(arg: *mut c_void) -> *mut c_void {
    let rt = unsafe { Arc::from_raw(arg as *const Runtime) };
    {
        // Held while the threads start, so the barrier count is final before
        // any thread can reach it.
        let mut g = rt.lock();
        for i in 1..g.wanted {
            let ok = if rt.raw_threads {
                spawn_raw(raw_worker, &rt)
            } else {
                let mine = Arc::clone(&rt);
                thread::Builder::new()
                    .name(format!("echo-rust-{i}"))
                    .spawn(move || worker(mine))
                    .is_ok() // dropping the JoinHandle detaches the thread
            };
            if !ok {
                break; // out of threads: run with those we have
            }
            g.started += 1;
        }
    }
    worker(rt);
    std::ptr::null_mut()
}

// ------------------------------------------------------------- plugin ABI

/// Called once per runtime on the JS thread. `cfg` (cfg_len bytes, NUL after
/// them) is valid only during the call. Touches no thread-local (see above).
///
/// # Safety
/// Called by dlhost with the pointers described in dlhost.h.
#[no_mangle]
pub unsafe extern "C" fn dlhost_init(
    cfg: *const c_char,
    cfg_len: usize,
    q: *mut DlhostQueue,
) -> c_int {
    // A newer host keeps every older version's functions and rules.
    if dlhost_abi_version() < DLHOST_ABI_VERSION {
        return 2;
    }
    let cfg: Vec<u8> = if cfg.is_null() || cfg_len == 0 {
        Vec::new()
    } else {
        std::slice::from_raw_parts(cfg as *const u8, cfg_len).to_vec()
    };
    if find(&cfg, b"fail-init").is_some() {
        return 7; // -> ERR_INIT_FAILED
    }
    let wanted = cfg_num(&cfg, b"threads", 1, MAX_THREADS, 2) as u32;
    let rt = Arc::new(Runtime {
        q: Queue(q),
        raw_threads: find(&cfg, b"raw-threads").is_some(),
        cfg,
        calls: AtomicU64::new(0),
        exit: Mutex::new(ExitCount {
            wanted,
            started: 1,
            finished: 0,
        }),
        cv: Condvar::new(),
    });
    if !spawn_raw(bootstrap, &rt) {
        return EAGAIN; // nobody polls q: we may still fail
    }
    0
}
