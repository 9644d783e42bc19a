"""Drives faasd's web UI in headless Chromium through chromedriver, as an operator would:
the page loads and lists a deployed function, deploys a process function with a label and
an annotation, invokes it with a body and a header and sees the answer, follows its log
lines, creates and removes a secret. Every step waits for what the page shows and fails
with what it showed instead; a screenshot of each step goes to --screenshots.

Run by the integration test `ui::` (which checks from outside what the browser did).
"""

import argparse
import base64
import pathlib
import sys

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

WAIT_S = 30


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--screenshots", required=True, type=pathlib.Path)
    p.add_argument("--listed", required=True, help="a function already deployed")
    p.add_argument("--command", required=True, help="the process function to deploy")
    a = p.parse_args()
    a.screenshots.mkdir(parents=True, exist_ok=True)

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--window-size=1400,1100"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    step = 0

    def shot(name: str) -> None:
        nonlocal step
        step += 1
        driver.save_screenshot(str(a.screenshots / f"{step:02}-{name}.png"))

    def wait_for(what: str, condition) -> object:
        try:
            return WebDriverWait(driver, WAIT_S).until(condition)
        except TimeoutException:
            shot(f"failed-{what.replace(' ', '-')}")
            error = driver.find_element(By.ID, "error").text
            raise SystemExit(f"waited {WAIT_S} s for {what}; the page's error line: {error!r}")

    def text_in(element_id: str, text: str):
        return ec.text_to_be_present_in_element((By.ID, element_id), text)

    try:
        # The basic-auth credentials /ui/ and /system/* ask for, on every request.
        token = base64.b64encode(f"admin:{a.password}".encode()).decode()
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                               {"headers": {"Authorization": f"Basic {token}"}})
        driver.get(a.url + "/ui/")
        listed = f'#functions tr[data-name="{a.listed}"]'
        wait_for("the deployed function to be listed",
                 ec.presence_of_element_located((By.CSS_SELECTOR, listed)))
        wait_for("the host line", text_in("host", "faasd"))
        shot("list")

        # Deploy a process function.
        driver.find_element(By.ID, "deploy-name").send_keys("second")
        Select(driver.find_element(By.ID, "deploy-kind")).select_by_value("process")
        driver.find_element(By.ID, "deploy-command").send_keys(a.command)
        driver.find_element(By.ID, "deploy-labels").send_keys("team=web")
        driver.find_element(By.ID, "deploy-annotations").send_keys("note=from the browser")
        driver.find_element(By.ID, "deploy-submit").click()
        wait_for("the deploy's answer", text_in("deploy-result", "deployed second"))
        row = '#functions tr[data-name="second"]'
        wait_for("the new function's row",
                 ec.presence_of_element_located((By.CSS_SELECTOR, row)))
        shot("deployed")

        # A bad deploy shows the API's reason.
        name = driver.find_element(By.ID, "deploy-name")
        name.clear()
        name.send_keys("second")
        driver.find_element(By.ID, "deploy-submit").click()
        wait_for("the conflict's reason", text_in("deploy-result", "already exists"))

        # Invoke it with a body and a header.
        driver.find_element(By.CSS_SELECTOR, f"{row} button.invoke").click()
        driver.find_element(By.ID, "invoke-headers").send_keys("X-From: browser")
        driver.find_element(By.ID, "invoke-body").send_keys("hello")
        driver.find_element(By.ID, "invoke-send").click()
        wait_for("the call's status", text_in("invoke-status", "200"))
        answer = driver.find_element(By.ID, "invoke-answer").text
        if "you sent 5 bytes: hello" not in answer:
            raise SystemExit(f"the answer shown is not the function's: {answer!r}")
        wait_for("the call to be counted",
                 ec.text_to_be_present_in_element((By.CSS_SELECTOR, f"{row} td.calls"), "1"))
        shot("invoked")

        # Its log, followed live: the line the instance wrote when it started.
        driver.find_element(By.CSS_SELECTOR, f"{row} button.logs").click()
        wait_for("the instance's log line", text_in("logs-output", "hello: instance"))
        shot("logs")
        driver.find_element(By.ID, "logs-stop").click()

        # A secret: created, listed by name, removed.
        driver.find_element(By.ID, "secret-name").send_keys("ui-token")
        driver.find_element(By.ID, "secret-value").send_keys("s3cret")
        driver.find_element(By.ID, "secret-create").click()
        secret = '#secrets li[data-secret="ui-token"]'
        wait_for("the secret to be listed",
                 ec.presence_of_element_located((By.CSS_SELECTOR, secret)))
        if "s3cret" in driver.page_source:
            raise SystemExit("the page shows a secret's value")
        shot("secret")
        driver.find_element(By.CSS_SELECTOR, f"{secret} button").click()
        wait_for("the secret to go",
                 ec.invisibility_of_element_located((By.CSS_SELECTOR, secret)))
        shot("secret-removed")
        driver.execute_script("window.scrollTo(0, 0)")
        shot("overview")
    finally:
        driver.quit()
    print(f"ui: {step} screenshots in {a.screenshots}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
