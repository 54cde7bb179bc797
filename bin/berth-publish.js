#!/usr/bin/env node
import "../dist/src/cmd/publish/main.js";
