"""Image builders: base root filesystems, the chroot and Packer builders, disk assembly, formats, local boot.

Every builder writes an artifact folder (:mod:`devserver.images.artifact`) that `devserver image upload` reads.
"""
