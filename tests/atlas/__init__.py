"""Tests of the unit atlas (csg.atlas, csg.report.atlas_page, csg atlas); a package so that its conftest
does not shadow the top-level tests/conftest.py that other test modules import from."""
