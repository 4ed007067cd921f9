#!/usr/bin/env node
'use strict'
// After prebuildify (npm's `prebuild`): the isolation host executable
// (dlhost-host, built by the same node-gyp run) goes beside the prebuilt
// addon, stripped, so an installed package can start isolated runtimes
// without a compiler. lib/isolate/host.ts looks for it there first.
const { execFileSync } = require('child_process')
const fs = require('fs')
const path = require('path')

const root = path.join(__dirname, '..')
const from = path.join(root, 'build', 'Release', 'dlhost-host')
const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`)
if (!fs.existsSync(from)) {
  console.error(`prebuild-host: ${from} was not built`)
  process.exit(1)
}
fs.mkdirSync(dir, { recursive: true })
const to = path.join(dir, 'dlhost-host')
fs.copyFileSync(from, to)
fs.chmodSync(to, 0o755)
try { execFileSync('strip', [to]) } catch {}
console.log(`prebuild-host: ${path.relative(root, to)}`)
