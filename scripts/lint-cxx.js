#!/usr/bin/env node
'use strict'
// `npm run lint:cxx`: the C++ sources against .clang-format. Without
// clang-format on PATH it says so and passes, except in CI (CI=true), where
// .ci/run installed it and a missing tool is an error.
const { spawnSync } = require('child_process')
const fs = require('fs')
const path = require('path')

const root = path.join(__dirname, '..')
const dirs = ['csrc', 'csrc/include', 'csrc/child', 'test/native', 'bench']
const files = dirs.flatMap(d => fs.readdirSync(path.join(root, d))
  .filter(f => /\.(cc|h)$/.test(f))
  .map(f => path.join(d, f)))
const r = spawnSync('clang-format', ['--dry-run', '--Werror', ...files], { cwd: root, stdio: 'inherit' })
if (r.error !== undefined) {
  if (process.env.CI === 'true') {
    console.error(`lint:cxx: clang-format is needed in CI (${r.error.message})`)
    process.exit(1)
  }
  console.log('lint:cxx: clang-format not found, C++ format not checked (apt-get install clang-format)')
  process.exit(0)
}
if (r.status !== 0) {
  console.error('lint:cxx: run `clang-format -i` on the files above')
  process.exit(r.status ?? 1)
}
console.log(`lint:cxx: ${files.length} files formatted`)
