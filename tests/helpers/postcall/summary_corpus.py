"""Call transcripts for judging summary titles: customer service, IVR voicemail messages,
appointment changes, billing, outages, deliveries.

Written to look like what the post-call job hands the summariser: speech-to-text segments
joined by spaces (no speaker labels), sometimes with "Agent:"/"Caller:" labels from an
import, greetings, names, fillers and the odd unpunctuated run. ``expect`` lists words of
which at least one must be in the title (lower case): the reason for the call.
"""

from __future__ import annotations

import re
from typing import TypedDict


class CorpusCall(TypedDict):
    id: str
    kind: str
    text: str
    expect: list[str]


CORPUS: list[CorpusCall] = [
    {"id": "internet-down", "kind": "outage", "expect": ["internet"],
     "text": "Good morning, thank you for calling. How can I help you? Hi, good morning. "
             "I'm calling because my internet has been down since yesterday evening. "
             "I already restarted the router twice. Okay, can I have your account number? "
             "Yes, it's 4 4 1 9 2. Thank you, I see an outage in your area. "
             "It should be fixed by this afternoon. Okay, thanks. Bye."},
    {"id": "order-never-arrived", "kind": "delivery", "expect": ["order", "arrived"],
     "text": "Hello, my name is Marita Olsen. I ordered a coffee machine two weeks ago and "
             "my order never arrived. The tracking page says delivered but there was nothing "
             "at the door. Marita, I'm sorry to hear that. Let me check the order. "
             "I will open a claim with the courier and send you a replacement. Thank you."},
    {"id": "change-address", "kind": "delivery", "expect": ["address"],
     "text": "Hi there. I want to change the delivery address for my parcel, I'm moving "
             "on Friday. Sure, what is the new address? It's 12 Elm Street, apartment 4. "
             "Okay, I've updated the address. Great, thank you so much."},
    {"id": "double-charge", "kind": "billing", "expect": ["charge", "charged", "invoice"],
     "text": "Agent: Thank you for calling, this is Anna, how can I help you today?\n"
             "Caller: Hi. I was charged twice for my internet invoice this month.\n"
             "Caller: The duplicate charge is forty dollars and I want a refund.\n"
             "Agent: I see the duplicate charge. I will submit a refund now.\n"
             "Caller: Great, thanks. Bye."},
    {"id": "refund-status", "kind": "billing", "expect": ["refund"],
     "text": "Hello. Um, I returned a pair of shoes three weeks ago and I still haven't "
             "received my refund. Can you check what's going on? Of course, can I have the "
             "order number? It's B 7 7 3 1. The refund was issued yesterday, it takes five "
             "business days. Oh okay, thank you."},
    {"id": "dentist-reschedule", "kind": "appointment", "expect": ["appointment", "reschedule"],
     "text": "Good afternoon, Smile Dental, Jenny speaking. Hi Jenny, this is Paul Becker. "
             "I need to reschedule my appointment on Thursday, something came up at work. "
             "No problem, would next Monday at ten work? Yes, Monday at ten is perfect. "
             "Great, see you then."},
    {"id": "voicemail-pharmacy", "kind": "voicemail", "expect": ["prescription"],
     "text": "Hi, this is Karen from Greenway Pharmacy calling to let you know your "
             "prescription is ready for pickup. We're open until 8 pm tonight. "
             "If you have any questions call us at 555 0142. Thanks, bye."},
    {"id": "voicemail-callback", "kind": "voicemail", "expect": ["quote", "insurance"],
     "text": "Hey, it's Mike Donovan. I'm calling about the insurance quote you sent me last "
             "week. I have a couple of questions about the deductible. Please call me back "
             "at 555 0199. Thanks."},
    {"id": "cancel-subscription", "kind": "customer service", "expect": ["cancel"],
     "text": "Thanks for calling StreamMax, how can I help? Yeah hi, I'd like to cancel my "
             "subscription. I don't use it anymore. I'm sorry to hear that, may I ask why? "
             "It's just too expensive. Okay, I've cancelled it, you'll have access until the "
             "end of the month. Thanks."},
    {"id": "password-reset", "kind": "customer service", "expect": ["password", "log",
                                                                     "account"],
     "text": "Hi, good morning. Good morning, calling about my online account. "
             "I can't log in, it says my password is wrong and the reset email never comes. "
             "Let me send a new reset link. Did you get it? Yes, got it now. Thank you."},
    {"id": "power-outage", "kind": "outage", "expect": ["power"],
     "text": "Hello, yes, the power is out on our whole street, Maple Avenue. It went out "
             "about an hour ago. Thank you, we're aware of an outage in that area and crews "
             "are on site. Do you know when it will be back? Estimated restoration is 6 pm."},
    {"id": "bill-too-high", "kind": "billing", "expect": ["bill"],
     "text": "Hi. So my bill this month is almost twice what I normally pay and I don't "
             "understand why. Let me look, you had roaming charges from your trip to Spain. "
             "Oh I see, I didn't know roaming wasn't included. Can I add a travel pack for "
             "next time? Sure, I'll add it."},
    {"id": "damaged-item", "kind": "delivery", "expect": ["damaged", "lamp"],
     "text": "Hello, I received my order today but the lamp arrived damaged, the glass shade "
             "is cracked. Could you send me a replacement? I'm sorry, yes, I'll ship a new "
             "one today and email you a return label. Perfect, thank you."},
    {"id": "tv-no-signal", "kind": "outage", "expect": ["tv", "signal"],
     "text": "Hi um I have a problem with my TV box it says no signal on every channel since "
             "this morning and I tried unplugging it okay let's try a reset from our side "
             "please wait a moment is it working now yes the channels are back thank you"},
    {"id": "card-lost", "kind": "customer service", "expect": ["card"],
     "text": "Hello, I think I lost my debit card yesterday at the mall. Can you block it and "
             "send me a new one? Certainly, I've blocked the card. A new card will arrive in "
             "five to seven days. Thank you so much."},
    {"id": "ivr-voicemail-leak", "kind": "voicemail", "expect": ["leak", "water",
                                                                 "ceiling"],
     "text": "Hi, this is Laura in unit 5B. There's water leaking from the ceiling in my "
             "bathroom, it started about an hour ago and it's getting worse. Please send "
             "someone as soon as possible. My number is 555 0123."},
    {"id": "appointment-confirm", "kind": "appointment", "expect": ["appointment",
                                                                    "confirm"],
     "text": "Hello, this is Doctor Patel's office calling to confirm your appointment on "
             "Tuesday at 3 pm. Please press 1 to confirm or call us back to reschedule. "
             "Thank you."},
    {"id": "upgrade-plan", "kind": "customer service", "expect": ["upgrade", "plan"],
     "text": "Hi, good morning. I want to upgrade my phone plan to the unlimited data one. "
             "Sure, the unlimited plan is 45 a month. Okay, let's do it. Done, it starts "
             "today. Great, thanks."},
    {"id": "late-technician", "kind": "customer service", "expect": ["technician"],
     "text": "Hello. Yes, hi, I had a technician booked for between 8 and 12 today and "
             "nobody showed up. It's now 2 pm. I'm very sorry, the technician was delayed, "
             "he will be there by 4. Okay, please make sure he comes."},
    {"id": "wrong-item", "kind": "delivery", "expect": ["wrong", "item", "size"],
     "text": "Good morning, calling. Hi, good morning. So I ordered a blue jacket in size "
             "medium and I received the wrong size, it's an extra large. Can I exchange it? "
             "Yes, I'll send a prepaid label and the medium will ship today. Thanks."},
    {"id": "payment-plan", "kind": "billing", "expect": ["payment"],
     "text": "Hi, um, I lost my job last month and I can't pay the full balance on my "
             "account right now. Is it possible to set up a payment plan? Yes, we can split "
             "it into three monthly payments. That would really help, thank you."},
    {"id": "slow-internet", "kind": "outage", "expect": ["internet", "slow"],
     "text": "Hello. The internet is really slow in the evenings, like two megabits, and "
             "I pay for two hundred. It's been like this for a week. Let me run a line test. "
             "I see noise on the line, I'll book a technician for Thursday. Okay."},
    {"id": "voicemail-school", "kind": "voicemail", "expect": ["sick", "school", "absent"],
     "text": "Hi, this is Sarah Miller, Tom's mom, from class 3B. Tom is sick today with a "
             "fever so he won't be in school. He should be back on Monday. Thank you."},
    {"id": "book-appointment", "kind": "appointment", "expect": ["appointment", "haircut",
                                                                 "book"],
     "text": "Hi, I'd like to book a haircut appointment for Saturday morning if you have "
             "anything. Let me see, we have 10:30 with Maria. Perfect, the name is James. "
             "Great, see you Saturday James."},
    {"id": "gas-smell", "kind": "outage", "expect": ["gas"],
     "text": "Hello, I need to report a gas smell outside my building on 4th Street near "
             "the corner. Thank you for reporting it, please stay away from the area, a crew "
             "is on the way. Okay."},
    {"id": "invoice-copy", "kind": "billing", "expect": ["invoice", "copy"],
     "text": "Good afternoon. Hi, could you send me a copy of my March invoice? I need it "
             "for my tax return. Of course, I'll email it to the address on file. Thanks."},
    {"id": "package-stuck", "kind": "delivery", "expect": ["package", "tracking"],
     "text": "Hi, my package has been stuck in transit for ten days, the tracking hasn't "
             "updated since the 3rd. The tracking number is 1Z 99. I'll open a trace with "
             "the carrier and call you back within 48 hours. Thank you."},
    {"id": "ivr-menu-billing", "kind": "customer service", "expect": ["bill", "autopay",
                                                                      "payment"],
     "text": "Billing. Yes, I have a question about my autopay, it didn't go through this "
             "month and I got a late fee. I see the card on file expired. I'll waive the "
             "late fee, please update the card. Okay, will do."},
    {"id": "restaurant-reservation", "kind": "appointment", "expect": ["reservation",
                                                                       "table"],
     "text": "Hi, I'm calling to make a reservation for four people tomorrow at 7. Sure, "
             "under what name? Garcia. Great, a table for four at 7 tomorrow. Thank you."},
    {"id": "heating-broken", "kind": "outage", "expect": ["heating", "heat", "boiler"],
     "text": "Hello, good evening. Our heating stopped working this afternoon and the "
             "boiler shows error E119. It's really cold in the house with the kids. Okay, an "
             "engineer can come tomorrow morning between 8 and 10. Thanks."},
    {"id": "voicemail-delivery-missed", "kind": "voicemail", "expect": ["delivery",
                                                                        "parcel"],
     "text": "Hello, this message is for Mr Chen. We tried to deliver your parcel today but "
             "nobody was home. You can rebook the delivery online or pick it up at the depot "
             "after 5 pm tomorrow. Thank you."},
    {"id": "close-account", "kind": "customer service", "expect": ["close", "account"],
     "text": "Hi, yes, hello. My name is Daniel Ortiz and I want to close my savings account. "
             "I moved to another bank. Okay Daniel, can you confirm your date of birth? "
             "March 3rd 1985. Thank you, I've started the closure. Thanks, bye."},
    {"id": "rambling-parcel", "kind": "delivery", "expect": ["parcel", "delivery",
                                                             "address"],
     "text": " ".join(["the parcel delivery to my new address was late again"] * 4)},
    {"id": "keys-and-hello", "kind": "customer service", "expect": ["contract", "renew"],
     "text": "Hello? Hello. Good morning. Good morning, calling. Yes. Um, so, my contract "
             "ends next month and I would like to know the options to renew it. We have two "
             "renewal offers, I'll email both. Good, thanks."},
]

# Two or more comma-separated chunks of one or two words each: "Name, marita, ordered".
_KEYWORD_LIST = re.compile(r"^[\w'-]+(?: [\w'-]+)?(?:, [\w'-]+(?: [\w'-]+)?)+$")


def title_problems(title: str, expect: list[str]) -> list[str]:
    """Why ``title`` is not a readable title naming the reason for the call ([] if it is)."""
    problems = []
    if not 0 < len(title) <= 50:
        problems.append(f"length {len(title)}")
    if _KEYWORD_LIST.match(title) or title.count(",") >= 2:
        problems.append("keyword list")
    if not title[:1].isupper():
        problems.append("no capital")
    if len(title.split()) < 2:
        problems.append("not a phrase")
    words = set(re.findall(r"[a-z]+", title.lower()))
    if expect and not words & set(expect):
        problems.append(f"none of {expect}")
    return problems
