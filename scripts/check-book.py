#!/usr/bin/env python3
"""Checks every internal link and anchor of the built book (`make docs`): each relative
href or src must name a file the build produced, and each #fragment an id in that file.
External links (a scheme, or //host) are left alone: CI has no network. Also fails when a
Markdown file in docs/ is in no chapter (SUMMARY.md), so no page is written and lost.
Usage: check-book.py BOOK_DIR DOCS_DIR"""
import html.parser
import os
import re
import sys
import urllib.parse

book, docs = sys.argv[1], sys.argv[2]


class Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links = set(), []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("id", "name") and v:
                self.ids.add(v)
            if k in ("href", "src") and v:
                self.links.append(v)


pages = {}
for root, _, files in os.walk(book):
    for f in files:
        # mdBook's 404 page links by absolute path, for the web server's root.
        if f.endswith(".html") and f != "404.html":
            path = os.path.normpath(os.path.join(root, f))
            p = Page()
            p.feed(open(path, encoding="utf-8").read())
            pages[path] = p

bad = []
for path, page in sorted(pages.items()):
    for link in page.links:
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//", link):
            continue
        url = urllib.parse.urlsplit(link)
        target = os.path.normpath(os.path.join(os.path.dirname(path), urllib.parse.unquote(url.path))) if url.path else path
        if os.path.isdir(target):
            target = os.path.join(target, "index.html")
        if not os.path.exists(target):
            bad.append(f"{os.path.relpath(path, book)}: {link}: no such file")
            continue
        frag = urllib.parse.unquote(url.fragment)
        if frag and target in pages and frag not in pages[target].ids:
            bad.append(f"{os.path.relpath(path, book)}: {link}: no anchor #{frag}")

summary = open(os.path.join(docs, "SUMMARY.md"), encoding="utf-8").read()
listed = {os.path.normpath(m) for m in re.findall(r"\]\(([^)#]+\.md)\)", summary)}
for root, _, files in os.walk(docs):
    for f in files:
        rel = os.path.normpath(os.path.relpath(os.path.join(root, f), docs))
        if f.endswith(".md") and rel != "SUMMARY.md" and rel not in listed:
            bad.append(f"{rel}: in no chapter of SUMMARY.md")

for b in bad:
    print(b)
print(f"book: {len(pages)} pages, {sum(len(p.links) for p in pages.values())} links, {len(bad)} broken")
sys.exit(1 if bad else 0)
