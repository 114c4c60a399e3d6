package checkpoint

import (
	"github.com/crtree/crtree/internal/archive"
	"github.com/crtree/crtree/internal/criu"
	"github.com/crtree/crtree/internal/hier"
)

// The archive carries a node's spec and external mounts in types of its
// own (archive.Spec, archive.ExternalMount), whose JSON is the format:
// these functions are the only place where crtree's runtime types and the
// archive's meet. TestArchiveSpec keeps them in step with hier.Spec.

// archiveSpec is how a node's spec is written into a manifest.
func archiveSpec(s hier.Spec) archive.Spec {
	a := archive.Spec{Cmd: s.Cmd, Env: s.Env, Cwd: s.Cwd, Hostname: s.Hostname,
		Rootfs: s.Rootfs, Image: s.Image, ImageName: s.ImageName, User: s.User, Net: s.Net, Init: s.Init}
	for _, b := range s.Binds {
		// The conversion compiles only while both types have the same
		// fields.
		a.Binds = append(a.Binds, archive.Bind(b))
	}
	for _, p := range s.Ports {
		a.Ports = append(a.Ports, archive.Port(p))
	}
	return a
}

// hierSpec is the spec an archived node was dumped with, its binds' host
// paths as the archive names them (RestoreTarget.specs decides which a
// restore uses).
func hierSpec(a archive.Spec) hier.Spec {
	s := hier.Spec{Cmd: a.Cmd, Env: a.Env, Cwd: a.Cwd, Hostname: a.Hostname,
		Rootfs: a.Rootfs, Image: a.Image, ImageName: a.ImageName, User: a.User, Net: a.Net, Init: a.Init}
	for _, b := range a.Binds {
		s.Binds = append(s.Binds, hier.Bind(b))
	}
	for _, p := range a.Ports {
		s.Ports = append(s.Ports, hier.Port(p))
	}
	return s
}

// archiveExternalMounts is how a node's external mounts are written into a
// manifest.
func archiveExternalMounts(ms []criu.ExternalMount) []archive.ExternalMount {
	var out []archive.ExternalMount
	for _, m := range ms {
		out = append(out, archive.ExternalMount{Mountpoint: m.Mountpoint, Key: m.Key, HostPath: m.HostPath})
	}
	return out
}
