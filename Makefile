# Debian tools with Debian's python3, whatever python a venv or pyenv puts first.
# Packages are built from the files git knows (tracked or not ignored), never
# from build caches, in a fresh copy under build/pkg.
BUILD := build/pkg
.PHONY: deb
deb:
	rm -rf $(BUILD) && mkdir -p $(BUILD)/xenblock dist
	git ls-files -co --exclude-standard -z | xargs -0 tar cf - | tar xf - -C $(BUILD)/xenblock
	cp -r packaging/debian $(BUILD)/xenblock/debian
	cd $(BUILD)/xenblock && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b
	mv $(BUILD)/xenblock_*.deb dist/
