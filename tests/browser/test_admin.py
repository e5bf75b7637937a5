"""In Debian's Chromium: the admin disables a radiologist who is signed in elsewhere, then gives a new password."""

from __future__ import annotations

import pytest

from tests.browser.conftest import add_user, sign_in

pytestmark = pytest.mark.browser


def test_admin_disables_and_resets_a_user_from_the_users_page(app, live_server, chromium):
    add_user(app, "chef", "admin")
    add_user(app, "dr_rad", "radiologist")
    from playwright.sync_api import expect

    radio = chromium.new_context(locale="fr-FR").new_page()
    sign_in(radio, live_server, "dr_rad")
    expect(radio.locator("header")).to_contain_text("dr_rad")

    admin = chromium.new_context(locale="fr-FR").new_page()
    refused = []
    admin.on("console", lambda message: "Content Security Policy" in message.text and refused.append(message.text))
    sign_in(admin, live_server, "chef")
    admin.click("text=Utilisateurs")
    row = admin.locator("tr[data-login=dr_rad]")
    row.locator("button", has_text="Désactiver").click()
    expect(admin.locator("tr[data-login=dr_rad] td.state")).to_have_text("désactivé")

    radio.reload()  # the radiologist's session ended on the server
    expect(radio.locator("input[name=password]")).to_be_visible()

    admin.locator("tr[data-login=dr_rad]").locator("button", has_text="Réactiver").click()
    admin.locator("tr[data-login=dr_rad] input[name=password]").fill("nouveau secret 2026")
    admin.locator("tr[data-login=dr_rad]").locator("button", has_text="Changer le mot de passe").click()
    expect(admin.locator("p.info")).to_contain_text("dr_rad")
    sign_in(radio, live_server, "dr_rad", "nouveau secret 2026")
    expect(radio.locator("header")).to_contain_text("dr_rad")
    assert refused == []
    radio.context.close()
    admin.context.close()


def test_admin_lands_on_the_users_page_creates_a_user_and_gives_a_role(app, live_server, chromium):
    """Reproduced: the admin landed on the audit log with no user page. Bad input tried: a password too short."""
    from playwright.sync_api import expect

    add_user(app, "chef", "admin")
    admin = chromium.new_context(locale="fr-FR").new_page()
    sign_in(admin, live_server, "chef")
    expect(admin.locator("h1")).to_have_text("Utilisateurs")  # straight after signing in

    create = admin.locator("form[action$='/admin/users']")
    create.locator("input[name=login]").fill("secretaire")
    create.locator("select[name=role]").select_option(label="accueil")
    create.locator("input[name=full_name]").fill("Claire MARTIN")
    create.locator("input[name=password]").evaluate("e => e.removeAttribute('minlength')")
    create.locator("input[name=password]").fill("court")
    create.locator("button", has_text="Créer").click()
    expect(admin.locator("p.error")).to_contain_text("Utilisateur non créé")
    expect(admin.locator("tr[data-login=secretaire]")).to_have_count(0)

    create.locator("input[name=login]").fill("secretaire")
    create.locator("select[name=role]").select_option(label="accueil")
    create.locator("input[name=password]").fill("mot de passe 2026")
    create.locator("button", has_text="Créer").click()
    row = admin.locator("tr[data-login=secretaire]")
    expect(row).to_contain_text("accueil")

    row.locator("select[name=role]").select_option(label="gestionnaire")
    row.locator("button", has_text="Changer le rôle").click()
    expect(admin.locator("p.info")).to_contain_text("secretaire a maintenant le rôle gestionnaire")

    user = chromium.new_context(locale="fr-FR").new_page()
    sign_in(user, live_server, "secretaire", "mot de passe 2026")
    expect(user.locator("header")).to_contain_text("secretaire")
    user.goto(f"{live_server}/dashboard")  # a manager's page, open to the new role
    expect(user.locator("h1")).to_have_text("Tableau de bord")
    user.context.close()
    admin.context.close()
