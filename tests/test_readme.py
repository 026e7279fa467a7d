"""README.md is also the package index page: its links must work there (issue 11)."""
import re

from mlan_timm import zoo


def test_readme_has_no_relative_markdown_links(repo_root):
    text = (repo_root / 'README.md').read_text(encoding='utf-8')
    links = re.findall(r'\]\(([^)\s]+)\)', text)
    assert links
    relative = [u for u in links if not re.match(r'(https?://|mailto:|#)', u)]
    assert not relative, relative
    repo_links = [u for u in links if u.startswith(zoo.REPO_URL)]
    assert repo_links and all(u.startswith(f'{zoo.REPO_URL}/blob/main/') for u in repo_links), repo_links
    for u in repo_links:
        assert (repo_root / u[len(f'{zoo.REPO_URL}/blob/main/'):].split('#')[0]).exists(), u
