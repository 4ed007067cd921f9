'use strict'
// The peers a user would pick instead of dlhost, as real packages or as the
// few lines a user would write with Node's own modules: koffi (the FFI)
// calling the same host-driven dlhost_handle of the same echo plugin,
// sync and .async; a worker_threads echo; a child_process IPC echo.
// Each is checked to echo before it is measured. JS thread only.
const fs = require('fs')
const os = require('os')
const path = require('path')
const { fork } = require('child_process')
const { Worker } = require('worker_threads')
const { LIBS, REQ } = require('./config')

let koffi = null
try { koffi = require('koffi') } catch {}

/** koffi's version, or null when it is not installed. */
const koffiVersion = () => koffi?.version ?? null

/**
 * The host-driven echo at `file` loaded by koffi, as an FFI user would:
 * its own dlopen and its own dlhost_open state. `sync(req)` is koffi's
 * fastest pattern (pointer out-params as Buffers, the answer copied out
 * with memcpy, then free); `async(req)` is .async on koffi's worker pool;
 * `dispose()` does dlhost_close and unload().
 */
function koffiEcho (file) {
  const lib = koffi.load(file)
  const libc = koffi.load('libc.so.6')
  const open = lib.func('void *dlhost_open(const char *cfg, size_t len)')
  const close = lib.func('void dlhost_close(void *state)')
  const handle = lib.func('int dlhost_handle(void *state, const void *req, size_t len, void *rsp, void *rsp_len)')
  const memcpy = libc.func('void *memcpy(void *dst, const void *src, size_t n)')
  const free = libc.func('void free(void *p)')
  const state = open('', 0)
  const rsp = Buffer.alloc(8)
  const len = Buffer.alloc(8)
  const take = (rspBuf, lenBuf) => {
    const n = Number(lenBuf.readBigUInt64LE(0))
    const p = koffi.decode(rspBuf, 'void *')
    const out = Buffer.allocUnsafe(n)
    if (n > 0) memcpy(out, p, n)
    free(p)
    return out
  }
  const sync = (req) => {
    if (handle(state, req, req.length, rsp, len) !== 0) throw new Error('koffi: rc != 0')
    return take(rsp, len)
  }
  // Each async call needs out-params of its own: they are written on koffi's worker.
  const async = (req) => new Promise((resolve, reject) => {
    const r = Buffer.alloc(8)
    const l = Buffer.alloc(8)
    handle.async(state, req, req.length, r, l, (err, rc) => {
      if (err) reject(err)
      else if (rc !== 0) reject(new Error('koffi: rc != 0'))
      else resolve(take(r, l))
    })
  })
  const dispose = () => {
    close(state)
    lib.unload()
  }
  return { sync, async, dispose }
}

/**
 * koffiEcho() on a private copy of the host-driven echo, checked to echo;
 * `cap` is koffi's limit of async calls at once (max_async_calls).
 */
function koffiPeer () {
  if (koffi === null || !fs.existsSync(LIBS.host)) return null
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-bench-koffi-'))
  const copy = path.join(dir, 'libecho_koffi.so')
  fs.copyFileSync(LIBS.host, copy)
  const echo = koffiEcho(copy)
  if (!echo.sync(REQ).equals(REQ)) throw new Error('koffi: echo mismatch')
  const dispose = () => {
    echo.dispose()
    fs.rmSync(dir, { recursive: true, force: true })
  }
  return { sync: echo.sync, async: echo.async, cap: koffi.config().max_async_calls, version: koffi.version, dispose }
}

/**
 * A worker_threads echo: each request posted to one worker and answered with
 * postMessage (the Buffer copied each way, as structured clone does).
 */
async function workerPeer () {
  const w = new Worker("require('worker_threads').parentPort.on('message', m => require('worker_threads').parentPort.postMessage(m))", { eval: true })
  const waiting = []
  w.on('message', m => waiting.shift()?.(Buffer.from(m.buffer, m.byteOffset, m.byteLength)))
  await new Promise(resolve => w.once('online', resolve))
  const call = (req) => new Promise(resolve => { waiting.push(resolve); w.postMessage(req) })
  if (!(await call(REQ)).equals(REQ)) throw new Error('worker: echo mismatch')
  return { call, dispose: () => w.terminate() }
}

/** A child_process IPC echo (fork + process.send), in order, one child. */
async function ipcPeer () {
  const child = fork('-e', ["process.on('message', m => process.send(m))"], { execArgv: [], stdio: 'ignore', serialization: 'advanced' })
  const waiting = []
  child.on('message', m => waiting.shift()?.(Buffer.from(m.buffer, m.byteOffset, m.byteLength)))
  const call = (req) => new Promise(resolve => { waiting.push(resolve); child.send(req) })
  if (!(await call(REQ)).equals(REQ)) throw new Error('child_process IPC: echo mismatch')
  return { call, pid: child.pid, dispose: () => { child.kill() } }
}

module.exports = { koffiEcho, koffiPeer, koffiVersion, workerPeer, ipcPeer }
