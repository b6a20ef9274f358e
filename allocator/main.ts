#!/usr/bin/env node
import '../shared/polyfill.js'

process.stderr.write('hyphae-allocator: not yet implemented\n')
process.exit(1)
