# The end client's page (/c/{token}), English.
# Every id here exists in locales/pt-BR/client_page.ftl and locales/es/client_page.ftl too
# (checked by `cargo test --lib client_page`). Times arrive formatted ("14:02 UTC"); counts
# arrive as numbers, so plural variants follow the language's rules.

## Frame

page-title = Moving your WhatsApp number
header-migrating = Moving { $number } to 360dialog for { $partner }
header-business = Business: { $business }
footer-private = This page is only for you: please do not share the link. { $partner } sent it to you.
language-label = Language
live-updates = This page updates by itself.

## Notices (the answer to what was just sent)

notice-code-rejected = That code was not accepted. { $count ->
    [0] No attempts are left.
    [one] You have 1 attempt left.
   *[other] You have { $count } attempts left.
} Check the most recent SMS or call and type the code again.
notice-code-received = Thank you, we received your code and are checking it now.
notice-resend-sent = { $method ->
    [voice] You will get a call in a moment that reads out a new code.
   *[other] A new code is on its way by SMS.
}
notice-resend-too-soon = Please wait a little: you can ask for a new code at { $time }.
notice-throttled = Too many attempts in a short time. Please wait { $wait } and then try again.
notice-not-now = That step is already over. Here is what to do now.
notice-form-expired = This page was open for a long time, so nothing was sent. Please try again.
notice-invalid-code = The code has 6 digits, numbers only. Please check it and type it again.
wait-seconds = { $count ->
    [one] 1 second
   *[other] { $count } seconds
}
wait-minutes = { $count ->
    [one] 1 minute
   *[other] { $count } minutes
}

## Preparing (queued … requesting the code)

preparing-title = We are checking your number
preparing-lead = This takes a few minutes and you do not need to keep this page open. Meanwhile, please make sure that everything below is in order.
checklist-heading = Before the move
check-done = Done
check-todo = To do
check-unknown = Please check
check-two-step-title = Two-step verification is turned off
check-two-step-how = Two-step verification is the 6-digit PIN that protects your number. Ask your current WhatsApp provider to turn it off for this number, or turn it off yourself in WhatsApp Manager → Phone numbers → Settings → Two-step verification, then confirm the e-mail that Meta sends. You can turn it on again after the move.
check-display-name-title = Your display name is approved
check-display-name-how = The name that customers see on WhatsApp must be approved by Meta, with no name change waiting for review. Your current provider can see its status; if a change is pending, wait for Meta's decision.
check-business-app-title = The number is not used in the WhatsApp Business app
check-business-app-how = This move is for numbers that already work with the WhatsApp Business Platform (API) through a provider. If you use this number in the WhatsApp Business app on a phone, tell { $partner }: it needs a different process.
check-business-verified-title = Your business is verified by Meta
check-business-verified-how = Complete Meta's business verification in Meta Business Settings → Security Center. It can take a few days.
check-phone-title = You can receive an SMS or a call on this number
check-phone-how = Keep the phone of this number at hand: WhatsApp sends a 6-digit code to it by SMS or voice call, and you type it on this page.

## Enter the code (awaiting_otp)

code-title = Type the code you received
code-sent = { $method ->
    [voice] WhatsApp is calling { $number } to read out a 6-digit code.
   *[other] WhatsApp sent a 6-digit code by SMS to { $number }.
}
code-sent-at = Sent at { $time }.
code-label = 6-digit code
code-hint = The 6 digits as the message shows them: 123456 or 123-456.
code-submit = Confirm the code
attempts-left = { $count ->
    [0] No attempts left.
    [one] 1 attempt left.
   *[other] { $count } attempts left.
}
code-expires = Enter the code before { $time }.
resend-heading = No code?
resend-switch = { $method ->
    [voice] Call me instead
   *[other] Send an SMS instead
}
resend-again = { $method ->
    [voice] Call me again
   *[other] Send the SMS again
}
available-now = Available now
available-in = Available in { $countdown }
available-at = Available at { $time }

## Checking the code (verifying_otp)

checking-title = Checking your code…
checking-lead = This usually takes a few seconds.

## A new code being requested (requesting_otp again: a resend, a call instead, a retry)

sending-title = Sending you a new code…
sending-lead = This usually takes a few seconds. Then type the new code here; an earlier code no longer works.

## Embedded Signup (awaiting_signup)

signup-title = Connect your number to 360dialog
signup-lead = To move your number, finish 360dialog's sign-up with your Facebook account. It takes about 10 minutes.
signup-button = Open the sign-up
signup-no-link = { $partner } will send you the sign-up link. Keep this page: it moves on by itself once you have finished.
signup-steps-heading = What to choose there
signup-step-login = Log in with the Facebook account that manages your business (an admin of your Meta business account).
signup-step-connected = When asked about your number, choose “Yes, this number is connected to WhatsApp Business API”.
signup-step-new-waba = Create a new WhatsApp Business Account. Do not pick your existing one.
signup-step-number = Enter your number ({ $number }) and the code that reaches it by SMS or call. A message saying that the number “is registered to an existing WhatsApp Business account or another Business Solution Provider” is expected: continue.
signup-step-finish = Finish the sign-up, then come back to this page.

## Finishing and done

finishing-title = Almost there
finishing-lead = You do not need to do anything else. We are finishing the move.
progress-heading = Progress
step-registration = Number registered on the WhatsApp Business Platform
step-templates = Message templates copied
step-channel = Number connected at 360dialog
step-done = Done
step-status-done = done
step-status-current = in progress
step-status-pending = not started
done-title = Your number has moved
done-lead = { $number } now works through 360dialog for { $partner }. Your display name, quality rating and approved message templates came along. You do not need to do anything else and can close this page.
done-lead-partial = { $number } now works through 360dialog for { $partner }. Your display name and quality rating came along; some of your message templates could not be copied, and { $partner } will take care of them. You do not need to do anything else and can close this page.
waiting-on-you = We need one thing from you

## Failed

failed-title = The move has stopped
failed-you-heading = What you need to do
failed-next-heading = What happens next
failed-partner-will = { $partner } has been told and will contact you, or try again once this is fixed.
failed-nothing-for-you = You do not need to do anything for now.
failed-generic-client = Please contact { $partner }: they will tell you what is needed.
fix-two-factor = Turn off two-step verification for this number: ask your current WhatsApp provider, or do it yourself in WhatsApp Manager → Phone numbers → Settings → Two-step verification, and confirm the e-mail that Meta sends. Then tell { $partner }.
fix-display-name = Your display name is not approved yet, or a name change is waiting for review. Wait until Meta approves it (your current provider can see its status), then tell { $partner }.
fix-business-verified = Complete Meta's business verification in Meta Business Settings → Security Center, then tell { $partner }.
fix-business-app = This number is used in the WhatsApp Business app, which this move cannot take over. { $partner } will explain the other options.
fix-otp-expired = No code was typed in time. { $partner } will request a new one; when it arrives, type it on this page straight away.
fix-otp-invalid = The code was not accepted too many times. { $partner } will request a new code; type the most recent one you receive.
fix-otp-rate-limited = WhatsApp has sent too many codes to this number. Please wait at least an hour; { $partner } will then ask for a new code.
fix-register-limit = The number was registered too many times in a short period and is blocked for 72 hours. Do not register it anywhere else meanwhile.
fix-pin = Two-step verification is still turned on for this number. Turn it off (ask your current provider, or use WhatsApp Manager → Phone numbers → Settings), then tell { $partner }.
fix-api-key-permission = Give { $partner } permission to manage the number: in the 360dialog Client Hub, open your profile → Partner, and allow it.
fix-signup-not-completed = 360dialog's sign-up was not finished in time. Ask { $partner } for a new sign-up link and finish it, choosing “Yes, this number is connected to WhatsApp Business API” and a new WhatsApp Business Account.

## The neutral page for an unknown, used or expired link

invalid-title = This link is no longer valid
invalid-body = The link may have expired or been replaced by a newer one. Please contact the company that sent it to you and ask for a new link.
