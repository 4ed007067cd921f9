#!/usr/bin/env node
'use strict'
// `npm run prebuilds`: the N-API prebuild of the addon (prebuildify --napi
// --strip → prebuilds/<platform>-<arch>/dlhost.node) and, beside it, the
// isolation host executable (dlhost-host) from the same node-gyp run, so an
// installed package loads and isolates without a compiler.
// `--if-stale` (npm's `prepack`): only when a prebuild is missing or older
// than a native source, so `npm pack` never ships a package without one.
// A separate step on purpose: prebuildify rebuilds from scratch (about 20 s),
// which `npm run build` (incremental) must not pay.
const { execFileSync } = require('child_process')
const fs = require('fs')
const path = require('path')

const root = path.join(__dirname, '..')
const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`)
const outputs = [path.join(dir, 'dlhost.node'), path.join(dir, 'dlhost-host')]

function newestSource () {
  let newest = fs.statSync(path.join(root, 'binding.gyp')).mtimeMs
  const walk = d => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name)
      if (e.isDirectory()) walk(p)
      else newest = Math.max(newest, fs.statSync(p).mtimeMs)
    }
  }
  walk(path.join(root, 'csrc'))
  return newest
}

function stale () {
  const src = newestSource()
  return outputs.some(o => !fs.existsSync(o) || fs.statSync(o).mtimeMs < src)
}

if (process.argv.includes('--if-stale') && !stale()) {
  console.log(`prebuild: ${path.relative(root, dir)} is up to date`)
  process.exit(0)
}
execFileSync(path.join(root, 'node_modules', '.bin', 'prebuildify'), ['--napi', '--strip'], { cwd: root, stdio: 'inherit' })
const from = path.join(root, 'build', 'Release', 'dlhost-host')
if (!fs.existsSync(from)) {
  console.error(`prebuild: ${from} was not built`)
  process.exit(1)
}
fs.mkdirSync(dir, { recursive: true })
const to = path.join(dir, 'dlhost-host')
fs.copyFileSync(from, to)
fs.chmodSync(to, 0o755)
try { execFileSync('strip', [to]) } catch {}
if (stale()) {
  console.error(`prebuild: ${path.relative(root, dir)} is still older than the sources`)
  process.exit(1)
}
console.log(`prebuild: ${outputs.map(o => path.relative(root, o)).join(', ')}`)
