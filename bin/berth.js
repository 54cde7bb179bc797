#!/usr/bin/env node
import "../dist/src/cmd/berth/main.js";
