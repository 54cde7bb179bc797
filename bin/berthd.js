#!/usr/bin/env node
import "../dist/src/cmd/berthd/main.js";
