#!/usr/bin/env node
'use strict'
// The dlhost demo (`npm start`): Level 1 refcounts, then a hot reload under
// continuous load — edit + rebuild, a broken build rolled back, and an
// in-place `cp` over the loaded file that the process survives.
// Needs a C compiler (cc). Exits 0 when every claim it prints held.
const { execFileSync } = require('child_process')
const fs = require('fs')
const os = require('os')
const path = require('path')
const dlhost = require('..')

const root = path.join(__dirname, '..')
const src = path.join(__dirname, 'echo-host', 'echo.c')
const include = path.join(root, 'csrc', 'include')
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'dlhost-demo-'))
const tty = process.stdout.isTTY
let failures = 0

function say (line = '') { process.stdout.write((tty ? '\r\x1b[K' : '') + line + '\n') }
function check (ok, what) {
  if (!ok) failures++
  say(`  ${ok ? 'ok ' : 'NOT OK'} ${what}`)
}
function inMaps (file) {
  return fs.readFileSync('/proc/self/maps', 'utf8').split('\n').some(l => l.endsWith(file) || l.endsWith(file + ' (deleted)'))
}
// Compile into a side file, then rename over the target: what a linker does.
function cc (out, source, flags = []) {
  const tmp = out + '.tmp'
  execFileSync('cc', ['-O2', '-fPIC', '-shared', '-I' + include, ...flags, '-o', tmp, source])
  fs.renameSync(tmp, out)
}

function level1 () {
  say('== Level 1: refcounted libraries ==')
  const plain = path.join(work, 'libplain.so')
  const stuck = path.join(work, 'libnodelete.so')
  cc(plain, src)
  cc(stuck, src, ['-Wl,-z,nodelete'])
  const a = dlhost.open(plain, { pin: false })
  const b = dlhost.open(plain, { pin: false })
  check(a.refs === 2, `opened ${path.basename(plain)} twice: one handle, refs = ${a.refs}, v${a.version.seq} sha256 ${a.version.sha256.slice(0, 12)}…`)
  a.release()
  check(b.refs === 1 && inMaps(plain), `released one: refs = ${b.refs}, still mapped`)
  b.release()
  check(!inMaps(plain) && !b.mapped, 'released the last (unpinned): dlclosed, gone from /proc/self/maps')
  const pinned = dlhost.open(plain)
  pinned.release()
  check(inMaps(plain) && pinned.pinned, 'a pinned library (the default) stays after its last release')
  const s = dlhost.open(stuck, { pin: false })
  s.release()
  check(inMaps(stuck) && s.stuck === 'NODELETE', `an unpinned -z nodelete library stays mapped: stuck = ${s.stuck}`)
  say('  libraries(): ' + dlhost.libraries().map(r => `${path.basename(r.path)} refs=${r.refs} pinned=${r.pinned} mapped=${r.mapped} stuck=${r.stuck}`).join('; '))
}

async function level3 () {
  say('')
  say('== Hot reload under load ==')
  const source = path.join(work, 'plugin.c')
  const lib = path.join(work, 'libplugin.so')
  const edit = v => fs.writeFileSync(source, fs.readFileSync(src, 'utf8').replace(/#define PLUGIN_VERSION "1"/, `#define PLUGIN_VERSION "${v}"`))
  edit('1')
  cc(lib, source)
  const plugin = await dlhost.reloadable(lib, 'demo', { settleMs: 50 })
  const events = []
  plugin.on('reload', e => events.push(`reload v${e.from.seq} -> v${e.to.seq} in ${e.ms.toFixed(1)} ms after the file settled (${e.strategy}${e.prepared ? ', copy prepared while it settled' : ''})`))
  plugin.on('error', e => events.push(`rejected a bad build: ${e.code} (${e.message.split('\n')[0]})`))
  plugin.on('drained', e => events.push(`v${e.version.seq} drained, dlclosed and verified unmapped`))

  const stats = { ok: 0, failed: 0, inFlight: 0, served: new Map() }
  let stop = false
  const client = async () => {
    while (!stop) {
      stats.inFlight++
      try {
        const { response, seq } = await plugin.callVersioned('version')
        stats.ok++
        stats.served.set(seq, response.toString())
      } catch (err) {
        stats.failed++
        events.push(`call failed: ${err.code}`)
      } finally { stats.inFlight-- }
    }
  }
  const clients = Array.from({ length: 64 }, client)
  let last = { t: performance.now(), ok: 0 }
  const status = () => {
    const now = performance.now()
    const rate = (stats.ok - last.ok) / ((now - last.t) / 1000)
    last = { t: now, ok: stats.ok }
    while (events.length) say('  ' + events.shift())
    const line = `  [v${plugin.version.seq}] ${Math.round(rate).toLocaleString('en')} calls/s | in flight ${stats.inFlight} | ok ${stats.ok} | failed ${stats.failed} | reloads ${plugin.reloads}`
    if (tty) process.stdout.write('\r\x1b[K' + line)
    else say(line)
  }
  const ticker = setInterval(status, tty ? 100 : 500)
  const reloaded = () => new Promise(resolve => plugin.once('reload', resolve))
  const rejected = () => new Promise(resolve => plugin.once('error', resolve))
  const settle = ms => new Promise(resolve => setTimeout(resolve, ms))

  await settle(600)
  say('  -- editing plugin.c to v2 and rebuilding (cc -o tmp && mv) --')
  let next = reloaded()
  edit('2')
  cc(lib, source)
  await next
  await settle(600)

  say('  -- writing a broken build: the entry symbol is missing --')
  const bad = rejected()
  cc(lib, source, ['-Ddlhost_handle=dlhost_handle_typo'])
  await bad
  await settle(600)

  say('  -- installing v3 with an in-place cp over the loaded file --')
  next = reloaded()
  edit('3')
  const v3 = path.join(work, 'v3.so')
  cc(v3, source)
  execFileSync('cp', [v3, lib])
  await next
  await settle(600)

  stop = true
  await Promise.all(clients)
  clearInterval(ticker)
  status()
  if (tty) process.stdout.write('\n')
  const copies = path.dirname(plugin.version.copy)
  await plugin.close()
  say('')
  say('== Summary ==')
  const answers = [...stats.served.entries()].sort((a, b) => a[0] - b[0]).map(([seq, v]) => `v${seq} said "${v}"`).join(', ')
  check(stats.failed === 0, `${stats.ok.toLocaleString('en')} calls, ${stats.failed} failed`)
  check(plugin.reloads === 2, `${plugin.reloads} reloads; broken build rolled back while the old version kept serving`)
  check(stats.served.size === 3, `answers came from: ${answers}`)
  check(!fs.existsSync(copies), `private copies (${copies}, mode 0700) removed on close`)
}

level1()
level3().then(() => {
  fs.rmSync(work, { recursive: true, force: true })
  say(failures === 0 ? '\ndemo: every check held' : `\ndemo: ${failures} check(s) failed`)
  process.exitCode = failures === 0 ? 0 : 1
}, err => {
  console.error(err)
  process.exitCode = 1
})
