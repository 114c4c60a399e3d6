package main

import "github.com/crtree/crtree/internal/node"

func supervise(h *node.Host, id string) error { return node.Supervise(h, id) }
