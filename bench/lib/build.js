'use strict'
// Builds what the benchmarks load: the N-API peer addon and two versions of
// the host-driven echo; install() replaces a file the way a linker does.
const { execFileSync } = require('child_process')
const fs = require('fs')
const path = require('path')
const { root } = require('./config')

function sh (cmd, args) {
  execFileSync(cmd, args, { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] })
}
function newer (out, ...srcs) {
  try {
    const m = fs.statSync(out).mtimeMs
    return srcs.every(s => fs.statSync(s).mtimeMs <= m)
  } catch { return false }
}
function nodeIncludeDir () {
  const cands = [path.resolve(path.dirname(process.execPath), '..', 'include', 'node'), '/usr/include/node']
  return cands.find(d => fs.existsSync(path.join(d, 'node_api.h')))
}
const benchOut = path.join(__dirname, '..', 'out') // git-ignored
function buildPeer () {
  const src = path.join(__dirname, '..', 'peer.c')
  const out = path.join(benchOut, 'peer.node')
  const inc = nodeIncludeDir()
  if (!inc) throw new Error('node_api.h not found')
  fs.mkdirSync(benchOut, { recursive: true })
  if (!newer(out, src)) {
    // N-API symbols stay undefined: the node binary provides them at load.
    sh(process.env.CC || 'cc', ['-O2', '-fPIC', '-shared', '-Wall', `-I${inc}`, '-o', out, src])
  }
  return require(out)
}
// Two builds of the host-driven echo that answer "version" with "1" / "2".
function buildVariants () {
  const src = path.join(root, 'examples', 'echo-host', 'echo.c')
  const hdr = path.join(root, 'csrc', 'include', 'dlhost.h')
  fs.mkdirSync(benchOut, { recursive: true })
  return ['1', '2'].map(v => {
    const out = path.join(benchOut, `echo_v${v}.so`)
    if (!newer(out, src, hdr)) {
      sh(process.env.CC || 'cc', ['-O2', '-fPIC', '-shared', '-Wall', `-I${path.join(root, 'csrc', 'include')}`,
        `-DPLUGIN_VERSION="${v}"`, '-o', out, src])
    }
    return { version: v, path: out }
  })
}

// The raw C loader loop (bench/dlloop.c).
function buildDlloop () {
  const src = path.join(__dirname, '..', 'dlloop.c')
  const out = path.join(benchOut, 'dlloop')
  fs.mkdirSync(benchOut, { recursive: true })
  if (!newer(out, src)) sh(process.env.CC || 'cc', ['-O2', '-Wall', '-o', out, src, '-ldl'])
  return out
}

// The koffi peer of dlhost_emit (bench/kflood.c): a C thread calling a JS callback.
function buildKflood () {
  const src = path.join(__dirname, '..', 'kflood.c')
  const out = path.join(benchOut, 'kflood.so')
  fs.mkdirSync(benchOut, { recursive: true })
  if (!newer(out, src)) sh(process.env.CC || 'cc', ['-O2', '-fPIC', '-shared', '-Wall', '-pthread', '-o', out, src])
  return out
}

// Atomically replace `target` with a copy of `from` (write a temp, rename).
let installSerial = 0
function install (from, target) {
  const tmp = `${target}.tmp${++installSerial}`
  fs.copyFileSync(from, tmp)
  fs.renameSync(tmp, target)
}

module.exports = { buildPeer, buildVariants, buildDlloop, buildKflood, install }
