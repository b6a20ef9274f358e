import '../shared/polyfill.js'
