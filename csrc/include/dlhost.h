/*
 * dlhost.h — the plugin ABI of dlhost (https://www.npmjs.com/package/dlhost).
 *
 * A plugin is a shared library that dlhost loads as a *runtime*. Three flavours
 * exist; dlhost picks one by the entry symbol it finds (or by `entry` in
 * load()'s options), in this order: dlhost_init, dlhost_handle, libffi_init.
 *
 *  1. Host-driven: export dlhost_handle (and optionally dlhost_open and
 *     dlhost_close). dlhost's own poll thread calls the handler, one task at a
 *     time per runtime. No threads in the plugin.
 *  2. Plugin-driven: export dlhost_init. It starts the plugin's own thread(s),
 *     which take tasks with dlhost_task_poll / dlhost_task_poll_batch and answer
 *     each with dlhost_task_respond.
 *  3. lua-resty-ffi compatible: export libffi_init and use the
 *     ngx_http_lua_ffi_* functions below, exactly as under lua-resty-ffi.
 *
 * The host functions are resolved by name at load time: the dlhost addon makes
 * them globally visible before it loads any plugin, so a plugin links with
 * `-shared` and no import library. Do not link with `-z defs` or
 * `--no-undefined` (Meson's default b_lundef=true adds the latter).
 *
 * Unload and threads (plugin-driven flavours): after unload, every call
 * queued before it is answered, then every poll returns NULL (0). The host
 * remembers every thread that polled and dlcloses the library only once a
 * poll has returned the end *and* each of those threads has exited (bounded
 * by unloadTimeoutMs; past it the library stays mapped and is reported
 * stuck). A thread that never polled is invisible to the host: in a
 * multi-threaded plugin, let no thread exit before every thread has polled
 * once (or join your own threads from the last one).
 */
#ifndef DLHOST_H
#define DLHOST_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped when functions or rules are added or changed. 2: state handed over
 * across reloads (dlhost_state_export / dlhost_state_import) and
 * dlhost_task_cancelled. A plugin built against version 1 loads unchanged. */
#define DLHOST_ABI_VERSION 2

#if defined(__GNUC__)
#define DLHOST_EXPORT __attribute__((visibility("default")))
#else
#define DLHOST_EXPORT
#endif

/* Results of the host functions that can refuse (version 2). */
#define DLHOST_OK 0
#define DLHOST_EAGAIN 1     /* full: JS is not keeping up; retry later, drop, or slow down */
#define DLHOST_ECLOSED 2    /* the runtime is ending or has ended */
#define DLHOST_ECANCELLED 3 /* the caller gave up on the task (a stream's reader stopped) */
#define DLHOST_EINVAL 4     /* a NULL queue, or NULL data with a non-zero length */
#define DLHOST_ENOMEM 5     /* the host could not allocate the message */

/* Opaque: one runtime's request queue. Owned by the host. */
typedef struct dlhost_queue dlhost_queue;
/* Opaque: one call. Owned by the host; valid from poll until respond. */
typedef struct dlhost_task dlhost_task;

/* ---------------------------------------------------------------- host ABI */

/* The ABI version of the loaded host (DLHOST_ABI_VERSION it was built with).
 * A newer host keeps every older version's functions and rules, so a plugin
 * checks `dlhost_abi_version() >= DLHOST_ABI_VERSION` (never ==): a plugin
 * built against version 1 loads under a version-2 host. Any thread. */
DLHOST_EXPORT unsigned dlhost_abi_version(void);

/* Takes the next task, blocking (spin briefly, then park) until there is one.
 * Returns NULL once the runtime is unloading and every task queued before the
 * unload has been taken: from then on every poll by every thread returns
 * NULL. After NULL the plugin must clean up and never touch `q` again.
 * Any plugin thread; any number of threads may poll one queue at once. */
DLHOST_EXPORT dlhost_task *dlhost_task_poll(dlhost_queue *q);

/* Like dlhost_task_poll but takes up to `max` ready tasks at once into `out`
 * (blocking until at least one). Returns how many; 0 means unload, as NULL
 * does above. `out` must not be NULL and `max` must be >= 1. */
DLHOST_EXPORT size_t dlhost_task_poll_batch(dlhost_queue *q, dlhost_task **out, size_t max);

/* The request of a task. The bytes are owned by the host and stay valid until
 * the task is answered; they are followed by a NUL byte that is not counted
 * in *len (so a text request can be used as a C string). `len` may be NULL. */
DLHOST_EXPORT const void *dlhost_task_request(dlhost_task *t, size_t *len);

/* Answers a task, exactly once. rc == 0 resolves the caller's promise with the
 * response; any other rc rejects it with ERR_PLUGIN carrying rc and the
 * response as detail. `rsp` must come from malloc (or be NULL for an empty
 * response, and then `len` is ignored); the host takes ownership and frees
 * it. After this call `t` is gone. A second answer to a task is detected
 * while its runtime exists (task memory lives as long as the runtime) and
 * the slot has not been reused for a new call (a freed slot is reused only
 * after every other free one, so at least 256 calls later): it is ignored,
 * its rsp freed, and counted (stats.misuse). */
DLHOST_EXPORT void dlhost_task_respond(dlhost_task *t, int rc, void *rsp, size_t len);

/* Non-zero once the caller gave up on the task: its AbortSignal aborted or
 * its timeoutMs passed. A long handler may stop early; it must still answer
 * the task once (the answer is dropped). Any thread, while the task is
 * valid (until it is answered). Version 2. */
DLHOST_EXPORT int dlhost_task_cancelled(dlhost_task *t);

/* ------------------------------------------------------- streams (v2) */

/* Sends one chunk of a streamed answer (runtime.stream() in JS): `len`
 * bytes, copied before it returns, at most 1 MiB. Any thread, between
 * taking the task and answering it; never blocks. Returns DLHOST_OK;
 * DLHOST_EAGAIN when the reader has highWaterMark chunks unread (retry
 * later: dlhost_task_writable says when); DLHOST_ECANCELLED once the reader
 * stopped (break, return(), an abort, a timeout): stop sending, and still
 * answer the task once; DLHOST_EINVAL for a task that is not a stream (a
 * plain call()) or a chunk too large. The stream ends with
 * dlhost_task_respond: a non-empty body is its last chunk; rc != 0 makes
 * the reader throw ERR_PLUGIN. Plugin-driven plugins only (a host-driven
 * handler has no task). Version 2. */
DLHOST_EXPORT int dlhost_task_send(dlhost_task *t, const void *data, size_t len);

/* Non-zero when dlhost_task_send would take a chunk now (a stream whose
 * reader has room and did not stop). Version 2. */
DLHOST_EXPORT int dlhost_task_writable(dlhost_task *t);

/* --------------------------------------------------- messages to JS (v2) */

/* Sends `len` bytes (copied before it returns) to JS as a 'message' of the
 * runtime that owns `q`. Any thread of the plugin, at any time; it never
 * blocks. Returns DLHOST_OK; DLHOST_EAGAIN when the runtime's message queue
 * is full (JS is not keeping up: the plugin retries later, drops, or slows
 * down; refusals are counted in stats.messagesRefused); DLHOST_ECLOSED once
 * the runtime has ended. A thread's messages arrive in the order it sent
 * them. `q` is the queue dlhost_init got (plugin-driven) or dlhost_attach
 * got (host-driven); it stays safe to call after the runtime ended (the
 * queue's memory is recycled, never freed: see docs/two-way.md). */
DLHOST_EXPORT int dlhost_emit(dlhost_queue *q, const void *data, size_t len);

/* ---------------------------------------------------- state across reloads */

/* Both optional, for dlhost's own ABIs (host-driven and plugin-driven), not
 * for lua-resty-ffi plugins. `state` is what dlhost_open returned
 * (host-driven), NULL for plugin-driven plugins. Version 2.
 *
 * When the serving version exports state, a reload holds new calls, lets the
 * old version answer its calls in flight, calls its dlhost_state_export,
 * then the new version's dlhost_state_import (after its open/init, before
 * its first call), then lets the held calls flow to the new version. The
 * bytes are opaque to dlhost: version the format yourself, and refuse one
 * you cannot read with a non-zero rc (the reload then rolls back, or with
 * stateRejected: 'fresh' the new version starts without it).
 *
 * Host-driven plugins: both run on dlhost's poll thread, between calls
 * (never beside dlhost_handle). Plugin-driven: inside a dlhost_task_poll of
 * one of the plugin's threads, in queue order; other threads of the plugin
 * may still be answering earlier calls (at a reload none is in flight). */

/* Writes the state: *out from malloc (the host frees it), *out_len its
 * length; *out = NULL means an empty state. Returns 0, or non-zero when it
 * cannot (the reload is then refused, and the old version serves on). */
typedef int (*dlhost_state_export_fn)(void *state, void **out, size_t *out_len);
/* Reads a state another version (or plugin.exportState(), or
 * reloadable()'s initialState) wrote. `buf` is owned by the host, valid for
 * the call only. Returns 0 when taken, non-zero to refuse it. */
typedef int (*dlhost_state_import_fn)(void *state, const void *buf, size_t len);
#ifndef DLHOST_NO_ENTRY_PROTOTYPES
DLHOST_EXPORT int dlhost_state_export(void *state, void **out, size_t *out_len);
DLHOST_EXPORT int dlhost_state_import(void *state, const void *buf, size_t len);
#endif

/* ------------------------------------------------- host-driven plugin side */

/* The entry points a plugin may define are declared below (extern "C",
 * exported): a definition with another signature, or one that C++ would
 * mangle, fails to compile where this header is included. cgo cannot spell
 * `const char *` in an //export: Go plugins define DLHOST_NO_ENTRY_PROTOTYPES
 * before the include. */

/* Optional. Called once per runtime on the library's owner thread (see
 * dlhost_init), before any task.
 * `cfg` is the runtime's configuration (NUL-terminated, not counted in len),
 * owned by the host and valid only during the call. Returns the state passed
 * to dlhost_handle and dlhost_close. Returning NULL fails load() with
 * ERR_INIT_FAILED (a plugin that needs no state does not export it). */
typedef void *(*dlhost_open_fn)(const char *cfg, size_t len);
#ifndef DLHOST_NO_ENTRY_PROTOTYPES
DLHOST_EXPORT void *dlhost_open(const char *cfg, size_t len);
#endif

/* Required. Called on dlhost's poll thread, one task at a time per runtime;
 * Runtime.callSync() calls it on the JS thread, concurrently with the poll
 * thread, so shared state must be thread-safe if callSync is used.
 * `req` is owned by the host, valid for the call only (NUL follows it).
 * The host sets *rsp = NULL and *rsp_len = 0 before the call. Set *rsp to a
 * malloc'd buffer (host frees it) and *rsp_len to its length, or leave *rsp
 * NULL for an empty answer. Return 0 for success; with any other rc the
 * body becomes the error's `detail`. */
typedef int (*dlhost_handle_fn)(void *state, const void *req, size_t len, void **rsp,
                                size_t *rsp_len);
#ifndef DLHOST_NO_ENTRY_PROTOTYPES
DLHOST_EXPORT int dlhost_handle(void *state, const void *req, size_t len, void **rsp,
                                size_t *rsp_len);
#endif

/* Optional (version 2). Hands a host-driven plugin its runtime's queue, for
 * dlhost_emit from its own threads. Called once on the library's owner
 * thread, after dlhost_open and before the first call. A plugin thread that
 * emits must be stopped by dlhost_close. */
typedef void (*dlhost_attach_fn)(void *state, dlhost_queue *q);
#ifndef DLHOST_NO_ENTRY_PROTOTYPES
DLHOST_EXPORT void dlhost_attach(void *state, dlhost_queue *q);
#endif

/* Optional. Called once on the library's owner thread after the last task of an
 * unloading runtime. */
typedef void (*dlhost_close_fn)(void *state);
#ifndef DLHOST_NO_ENTRY_PROTOTYPES
DLHOST_EXPORT void dlhost_close(void *state);
#endif

/* --------------------------------------------- plugin-driven plugin side */

/* Called once per runtime on the library's owner thread: the dlhost thread
 * that dlopen'ed the library and does its final dlclose, never the JS thread.
 * It exits before the unmapping is checked, so thread-local state created
 * here (a destructor registered by std::thread::spawn, say) cannot pin the
 * library. `cfg` (NUL-terminated, not counted in cfg_len, never NULL: ""
 * when there is none) is valid only during the call. Start thread(s) that
 * poll `q`, and return 0; any other value fails load() with ERR_INIT_FAILED
 * and the plugin must not touch `q` afterwards. */
typedef int (*dlhost_init_fn)(const char *cfg, size_t cfg_len, dlhost_queue *q);
#ifndef DLHOST_NO_ENTRY_PROTOTYPES
DLHOST_EXPORT int dlhost_init(const char *cfg, size_t cfg_len, dlhost_queue *q);
#endif

/* -------------------------------------------- lua-resty-ffi compatibility */

/* A lua-resty-ffi plugin exports `int libffi_init(char *cfg, void *tq)`.
 * cfg is a NUL-terminated copy the plugin may modify (strsep), never NULL
 * ("" when there is none); it is freed after libffi_init returns, which runs
 * on the library's owner thread as dlhost_init does. Return 0 on success. */
typedef int (*libffi_init_fn)(char *cfg, void *tq);
#ifndef DLHOST_NO_ENTRY_PROTOTYPES
DLHOST_EXPORT int libffi_init(char *cfg, void *tq);
#endif

/* As dlhost_task_poll: NULL means the runtime was unloaded. */
DLHOST_EXPORT void *ngx_http_lua_ffi_task_poll(void *tq);

/* The request (NUL-terminated; *len excludes the NUL, clamped to INT_MAX).
 * Owned by the host. */
DLHOST_EXPORT char *ngx_http_lua_ffi_get_req(void *tsk, int *len);

/* Answers a task. `rsp` is malloc'd by the plugin and freed by the host, or
 * NULL for no body. rsp_len <= 0 with rsp != NULL means rsp is a C string. */
DLHOST_EXPORT void ngx_http_lua_ffi_respond(void *tsk, int rc, char *rsp, int rsp_len);

#ifdef __cplusplus
}
#endif

#endif /* DLHOST_H */
