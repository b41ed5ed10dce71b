# Debian tools with Debian's python3, whatever python a venv or pyenv puts first.
# Packages are built from the files git knows (tracked or not ignored), never
# from build caches, in a fresh copy under build/pkg; what they make goes to dist/.
BUILD := build/pkg
VERSION := $(shell sed -n 's/^version *= *//p' setup.cfg)
SRC := $(BUILD)/xenblock-$(VERSION)
SYSTEM := PATH=/usr/sbin:/usr/bin:/sbin:/bin
.PHONY: deb rpm dist man
# The man pages, made from packaging/man/*.rst by docutils' rst2man (both
# packages run `make man` as they build; they are not kept in git).
MAN := build/man
ALIASES := $(notdir $(wildcard scripts/block-*))

# A recipe's first step rather than a target: `make deb rpm` must give each
# package a fresh copy, and make would run a shared target only once.
define fresh_copy
	rm -rf $(BUILD) && mkdir -p $(SRC) dist
	git ls-files -co --exclude-standard -z | xargs -0 tar cf - | tar xf - -C $(SRC)
endef

deb:
	$(fresh_copy)
	cp -r packaging/debian $(SRC)/debian
	cd $(SRC) && $(SYSTEM) dpkg-buildpackage -us -uc -b
	mv $(BUILD)/xenblock_*.deb dist/

# rpmbuild --nodeps: this host's rpm database is empty, so it cannot see the
# BuildRequires (Debian's python3, pip and setuptools do the building).
rpm:
	$(fresh_copy)
	tar czf $(SRC).tar.gz -C $(BUILD) xenblock-$(VERSION)
	$(SYSTEM) rpmbuild -bb --nodeps --define "_topdir $(abspath $(BUILD))/rpmbuild" \
	    --define "_sourcedir $(abspath $(BUILD))" \
	    --define "packager xenblock developers <xenblock@example.org>" $(SRC)/packaging/rpm/xenblock.spec
	mv $(BUILD)/rpmbuild/RPMS/noarch/xenblock-*.rpm dist/

# The wheel is built from the sdist (python3 -m build does that), so the
# sdist is proven to hold what a build needs.
dist:
	$(fresh_copy)
	cd $(SRC) && $(SYSTEM) python3 -m build --no-isolation --outdir $(abspath dist) .
	$(SYSTEM) twine check --strict dist/xenblock-$(VERSION).tar.gz dist/xenblock-$(VERSION)-py3-none-any.whl

# <name>.<section>.rst becomes <name>.<section>. xenblock-disks(5) is the page
# of every script: its NAME line gets their names (rst2man writes its title
# only) and each gets a block-<type>(8) alias page (a .so line, which
# dh_installman turns into a symlink), all from the list of scripts/block-*.
man:
	rm -rf $(MAN) && mkdir -p $(MAN)
	for rst in packaging/man/*.rst; do \
	  $(SYSTEM) rst2man --strict $$rst $(MAN)/$$(basename $$rst .rst) || exit 1; \
	done
	names=$$(echo $(ALIASES) | sed 's/ /, /g'); \
	  sed -i "/^\.SH NAME\$$/{n;s/^xenblock-disks /xenblock-disks, $$names /}" $(MAN)/xenblock-disks.5; \
	  grep -q "^xenblock-disks, $$names " $(MAN)/xenblock-disks.5
	for alias in $(ALIASES); do echo .so man5/xenblock-disks.5 > $(MAN)/$$alias.8; done
