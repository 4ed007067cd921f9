#!/usr/bin/env node
'use strict'
// `npm run test:asan`: the tap suite against an ASan+UBSan build of the addon.
//
//  0. Builds dist/ and the native fixtures and examples (build.js ts,
//     native-tests), as `npm test` does.
//  1. Builds the addon with DLHOST_SANITIZE=address (binding.gyp adds
//     -fsanitize=address,undefined) in a private staging directory,
//     node_modules/.cache/dlhost-asan/<checkout>/, never in build/: the normal build stays
//     intact and usable by anyone running the tests meanwhile (an ASan addon
//     loaded without the ASan runtime preloaded aborts the process), and the
//     next `npm run build` stays incremental. The staging dir links to csrc/
//     and binding.gyp, so its own make is incremental too.
//  2. Runs tap with DLHOST_PREBUILD=<staging> (node-gyp-build then loads the
//     sanitized addon: in this process, its workers and every child process),
//     the sanitizer runtimes preloaded (node itself is not instrumented), leak
//     detection off (node leaks by design at exit), and every report fatal.
//  3. Exits with tap's status. Nothing to restore: build/ was never touched.
//
// Usage: node scripts/asan.js [test files…]   (default: every test/*.test.ts)
// Env:   ASAN_JOBS (tap --jobs, default 1), ASAN_TIMEOUT (tap --timeout, s).
const { execFileSync, spawnSync } = require('child_process')
const fs = require('fs')
const path = require('path')

const root = path.join(__dirname, '..')
// One staging dir per checkout (node_modules may be shared by symlink).
const staging = path.join(root, 'node_modules', '.cache', 'dlhost-asan',
  require('crypto').createHash('sha1').update(fs.realpathSync(root)).digest('hex').slice(0, 12))
const bin = (name) => path.join(root, 'node_modules', '.bin', name)

function log (msg) { process.stderr.write(`asan: ${msg}\n`) }

function gccFile (name) {
  const p = execFileSync('g++', ['-print-file-name=' + name], { encoding: 'utf8' }).trim()
  if (!path.isAbsolute(p) || !fs.existsSync(p)) throw new Error(`g++ does not know ${name} (install the gcc sanitizer runtimes)`)
  return fs.realpathSync(p)
}

function link (target, at) {
  try {
    if (fs.readlinkSync(at) === target) return
    fs.unlinkSync(at)
  } catch (err) {
    if (err.code !== 'ENOENT') throw err
  }
  fs.symlinkSync(target, at)
}

// Same node headers logic as build.js: never download them.
function nodedirArgs () {
  if (process.env.npm_config_nodedir) return ['--nodedir', process.env.npm_config_nodedir]
  const prefix = path.resolve(path.dirname(process.execPath), '..')
  return fs.existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) ? ['--nodedir', prefix] : []
}

function buildSanitized () {
  fs.mkdirSync(staging, { recursive: true })
  // binding.gyp and csrc/ by symlink: gyp resolves sources relative to the
  // .gyp file's directory, make sees every edit of csrc/.
  link(path.join(root, 'binding.gyp'), path.join(staging, 'binding.gyp'))
  link(path.join(root, 'csrc'), path.join(staging, 'csrc'))
  const env = { ...process.env, DLHOST_SANITIZE: 'address' }
  const gyp = (args) => execFileSync(process.execPath, [bin('node-gyp'), ...args, '--directory', staging], { stdio: 'inherit', cwd: staging, env })
  const marker = path.join(staging, 'build', 'config.gypi')
  const gypStat = fs.statSync(path.join(root, 'binding.gyp'))
  if (!fs.existsSync(path.join(staging, 'build', 'Makefile')) || fs.statSync(marker).mtimeMs < gypStat.mtimeMs) {
    gyp(['configure', ...nodedirArgs()])
  }
  gyp(['build', '--jobs', 'max'])
  const addon = path.join(staging, 'build', 'Release', 'dlhost.node')
  const needed = execFileSync('readelf', ['-d', addon], { encoding: 'utf8' })
  if (!/libasan\.so/.test(needed) || !/libubsan\.so/.test(needed)) throw new Error(`${addon} is not linked with libasan/libubsan: DLHOST_SANITIZE=address had no effect (binding.gyp?)`)
  return addon
}

function main () {
  const files = process.argv.slice(2)
  const t0 = Date.now()
  // What the tests need besides the addon (none of it touches build/).
  execFileSync(process.execPath, [path.join(__dirname, 'build.js'), 'ts'], { stdio: 'inherit', cwd: root })
  execFileSync(process.execPath, [path.join(__dirname, 'build.js'), 'native-tests'], { stdio: 'inherit', cwd: root })
  const addon = buildSanitized()
  const preload = [gccFile('libasan.so'), gccFile('libubsan.so')]
  const env = {
    ...process.env,
    DLHOST_PREBUILD: staging,
    LD_PRELOAD: [...preload, process.env.LD_PRELOAD].filter(Boolean).join(' '),
    // detect_leaks=0: node (not instrumented) leaks by design at exit.
    // abort_on_error: a report kills the process, so the test fails loudly.
    ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1:halt_on_error=1',
    UBSAN_OPTIONS: 'halt_on_error=1:abort_on_error=1:print_stacktrace=1'
  }
  // Check that the sanitized addon is the one the tests will load.
  // Check, in a process like the tests', that the sanitized addon is the one
  // loaded and the sanitizer runtime is in.
  const probe = spawnSync(process.execPath, ['-e', `
    require(${JSON.stringify(path.join(root, 'dist', 'binding.js'))})
    const maps = require('fs').readFileSync('/proc/self/maps', 'utf8')
    console.log(JSON.stringify({ addon: maps.includes(${JSON.stringify(addon)}), asan: /libasan\\.so/.test(maps), ubsan: /libubsan\\.so/.test(maps) }))`],
  { env, encoding: 'utf8', cwd: root })
  let seen = {}
  try { seen = JSON.parse(probe.stdout) } catch {}
  if (probe.status !== 0 || !seen.addon || !seen.asan || !seen.ubsan) {
    log(`the tests would not run the sanitized addon (${probe.stdout.trim() || 'no output'}):\n${probe.stderr}`)
    process.exit(1)
  }
  log(`built ${path.relative(root, addon)} in ${((Date.now() - t0) / 1000).toFixed(1)} s; LD_PRELOAD=${env.LD_PRELOAD}`)
  const jobs = process.env.ASAN_JOBS ?? '1'
  const timeout = process.env.ASAN_TIMEOUT ?? '600'
  const t1 = Date.now()
  const r = spawnSync(process.execPath, [bin('tap'), '--jobs', jobs, '--timeout', timeout, ...files],
    { stdio: 'inherit', cwd: root, env })
  log(`tap exited with ${r.status ?? r.signal} after ${((Date.now() - t1) / 1000).toFixed(1)} s`)
  process.exit(r.status ?? 1)
}

main()
