// Package image keeps the container images nodes run on: each image's
// layers unpacked once under the state root, content-addressed by their
// digest (the uncompressed layer's, the image config's "diff ID"), and
// shared read-only between nodes as overlayfs lower directories; each
// node writes to an upper directory of its own.
//
// Import reads what users have, with go-containerregistry: an OCI image
// layout directory, an OCI archive (a tar of such a layout, as `podman
// save --format oci-archive` writes), a docker archive (`docker save`),
// and a plain root file system, as a tarball or a directory. Every layer
// is verified against its digest while it is unpacked, and unpacked as a
// hostile archive: nothing leaves the layer's directory, device nodes are
// left out (a node has a /dev of its own), and the image format's
// whiteouts (.wh.NAME, .wh..wh..opq) become overlayfs's own (a 0/0
// character device, the trusted.overlay.opaque attribute).
//
// The store's layout under the state root:
//
//	images/images.json            the imported images (Image)
//	images/layers/HEX/root/       a layer, unpacked (an overlay lower dir)
//	images/layers/HEX/layer.tar   the layer as imported, uncompressed
//	images/configs/HEX.json       an image's config, as imported (HEX: its ID)
//	images/tmp/KIND-PID-RANDOM/   imports and receives under way
//
// An archive can carry the images its nodes run on (dump --with-image):
// [Store.Carry] says which files of the store it needs, and a restore
// takes them back with a [Receiver], which verifies the config against
// the image's ID and every layer against its digest.
package image
