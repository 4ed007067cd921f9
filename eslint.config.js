'use strict'
// `npm run lint` (part of `npm test`): neostandard (standard style, with
// typescript-eslint for the .ts files), the style this code base is in.
const neostandard = require('neostandard')

module.exports = [
  ...neostandard({
    ts: true,
    ignores: ['dist/**', 'build/**', 'prebuilds/**', 'node_modules/**', '**/out/**', 'examples/echo-rust/target/**', 'test/fixtures/**']
  }),
  {
    rules: {
      // `void promise` marks a deliberate fire-and-forget (its errors are
      // handled where it settles): the house style.
      'no-void': ['error', { allowAsStatement: true }],
      // Loops here wait on flags that callbacks and timers set: the rule
      // cannot see those writes.
      'no-unmodified-loop-condition': 'off'
    }
  }
]
