"""Run templates through Go's real text/template the way Ollama executes them (skip when `go` is absent).

The Go program is built once per session. It mimics Ollama's server: the Modelfile SYSTEM becomes a
system message when the request has none; system messages are joined by a blank line into `.System`;
consecutive same-role messages are merged; `.Messages` keeps the system messages; `.Response` is empty.
A `legacy` case executes the `.System`/`.Prompt` form instead (one exchange).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

GO_SOURCE = r'''package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type Case struct {
	ModelfileSystem string    `json:"modelfile_system"`
	Messages        []Message `json:"messages"`
	Legacy          bool      `json:"legacy"`
}

type Input struct {
	Template string `json:"template"`
	Cases    []Case `json:"cases"`
}

func main() {
	var in Input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	tmpl := template.Must(template.New("modelfile").Parse(in.Template))
	out := []string{}
	for _, c := range in.Cases {
		msgs := c.Messages
		if c.ModelfileSystem != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
			msgs = append([]Message{{Role: "system", Content: c.ModelfileSystem}}, msgs...)
		}
		var systems []string
		var collated []*Message
		for i := range msgs {
			m := msgs[i]
			if m.Role == "system" {
				systems = append(systems, m.Content)
			}
			if len(collated) > 0 && collated[len(collated)-1].Role == m.Role {
				collated[len(collated)-1].Content += "\n\n" + m.Content
			} else {
				collated = append(collated, &m)
			}
		}
		data := map[string]any{"System": strings.Join(systems, "\n\n"), "Messages": collated, "Response": ""}
		if c.Legacy {
			prompt := ""
			for _, m := range msgs {
				if m.Role == "user" {
					prompt = m.Content
				}
			}
			data = map[string]any{"System": strings.Join(systems, "\n\n"), "Prompt": prompt, "Response": ""}
		}
		var b strings.Builder
		if err := tmpl.Execute(&b, data); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
'''


def build_renderer(work: Path) -> Path:
    """Compile the Go program into `work`; skips the calling test when Go is not installed."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("Go is not installed: `apt-get install -y golang-go` (make test-setup does) for the Ollama template parity tests")
    (work / "main.go").write_text(GO_SOURCE, encoding="utf-8")
    env = {**os.environ, "GOCACHE": str(work / "cache"), "GOPATH": str(work / "gopath"), "GO111MODULE": "off"}
    binary = work / "render"
    proc = subprocess.run([go, "build", "-o", str(binary), "main.go"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return binary


def render(binary: Path, template: str, cases: list[dict[str, Any]]) -> list[str]:
    """Execute `template` for each case ({messages, modelfile_system?, legacy?}); returns the texts."""
    payload = json.dumps({"template": template, "cases": cases})
    proc = subprocess.run([str(binary)], input=payload, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)
