"""The sentence bank behind the synthetic preference data.

Kept apart from the generator so the generator reads as logic. Every topic has a task (a verb
phrase used in prompts), a subject (a noun phrase used in vague, generic sentences) and five
concrete tips. Tips are unique across topics, so a tip from another topic is an off-topic
sentence whose wording is just as concrete as an on-topic one: relevance can only be judged
against the prompt.
"""

from __future__ import annotations

from typing import NamedTuple


class Topic(NamedTuple):
    task: str  # "bake sourdough bread": fills "How do I {task}?"
    subject: str  # "sourdough baking": fills vague sentences
    tips: tuple[str, ...]  # concrete, on-topic sentences


class Harm(NamedTuple):
    request: str  # first person, as the user asks it
    alternative: str  # the safe help a good refusal offers instead


TOPICS: tuple[Topic, ...] = (
    Topic("bake sourdough bread", "sourdough baking", (
        "Feed your starter twice a day for a week until it doubles within six hours.",
        "Use about 75 percent water by weight, for example 375 grams of water for 500 grams of flour.",
        "Let the dough bulk ferment at around 24 degrees Celsius for four to six hours, with stretch and folds every 30 minutes at first.",
        "Bake in a preheated Dutch oven at 250 degrees Celsius for 20 minutes with the lid on, then 20 minutes uncovered.",
        "Wait at least an hour before slicing so the crumb can set.",
    )),
    Topic("improve my credit score", "credit scores", (
        "Pay every bill on time, since payment history makes up about 35 percent of most scores.",
        "Keep your card balances below 30 percent of each card's limit, and below 10 percent if you can.",
        "Request your free credit reports and dispute any errors with the bureau in writing.",
        "Avoid opening several new accounts within a few months, because each hard inquiry lowers your score slightly.",
        "Keep your oldest card open, even if you rarely use it, to preserve the length of your credit history.",
    )),
    Topic("train for my first marathon", "marathon training", (
        "Follow a 16 to 20 week plan that raises your weekly mileage by no more than 10 percent per week.",
        "Do one long run every weekend, building up to about 32 kilometres three weeks before race day.",
        "Run most of your miles at an easy, conversational pace and keep only one session a week hard.",
        "Practise taking gels during long runs, about 30 to 60 grams of carbohydrate per hour.",
        "Taper for the final two to three weeks by cutting your mileage by about 40 percent.",
    )),
    Topic("learn to play the guitar", "learning guitar", (
        "Start with the open chords G, C, D, E minor and A minor, which cover hundreds of songs.",
        "Practise for 15 to 20 minutes every day rather than for two hours once a week.",
        "Use a clip-on tuner before every session, since an out-of-tune guitar makes correct chords sound wrong.",
        "Practise switching between two chords with a metronome at 60 beats per minute, then raise the tempo.",
        "Press the strings just behind the fret wire, not in the middle of the fret, to avoid buzzing.",
    )),
    Topic("grow tomatoes on my balcony", "growing tomatoes", (
        "Choose a container of at least 20 litres per plant and make sure it has drainage holes.",
        "Pick a compact variety such as 'Tiny Tim' or a bush cherry tomato.",
        "Place the pot where it gets at least six to eight hours of direct sun a day.",
        "Water deeply at the base whenever the top 2 centimetres of soil are dry, and keep the leaves dry.",
        "Feed with a high-potassium tomato fertiliser every week once the first flowers appear.",
    )),
    Topic("prepare for a job interview", "job interviews", (
        "Research the company's products, recent news and the team you would join.",
        "Prepare three or four stories in the STAR format: situation, task, action and result.",
        "Rehearse your answers out loud, ideally with a friend or by recording yourself.",
        "Prepare two questions for the interviewer, such as how success is measured in the first 90 days.",
        "Send a short thank-you email within 24 hours that mentions something specific from the conversation.",
    )),
    Topic("fall asleep faster", "sleep", (
        "Go to bed and wake up at the same time every day, including weekends.",
        "Stop drinking coffee at least eight hours before bedtime.",
        "Keep the bedroom cool, around 18 degrees Celsius, dark and quiet.",
        "Put screens away 30 to 60 minutes before bed and read a paper book instead.",
        "If you are still awake after 20 minutes, get up and do something calm in dim light until you feel sleepy.",
    )),
    Topic("save money on groceries", "grocery budgets", (
        "Plan your meals for the week and shop from a written list.",
        "Compare the unit price on the shelf label rather than the package price.",
        "Buy store-brand staples like rice, oats and canned beans, which are often 20 to 30 percent cheaper.",
        "Cook large batches and freeze portions so that leftovers do not go to waste.",
        "Shop once a week instead of several times, since every extra trip adds impulse purchases.",
    )),
    Topic("write a cover letter", "cover letters", (
        "Address the letter to a named person, which you can usually find on the company website.",
        "Open with the specific role and one sentence on why you are a strong fit.",
        "Pick two achievements from your CV and quantify them, for example 'cut processing time by 30 percent'.",
        "Keep it under one page, roughly 250 to 400 words.",
        "Mirror two or three of the key requirements from the job advert.",
    )),
    Topic("change a flat tyre", "flat tyres", (
        "Park on flat ground, turn on the hazard lights and apply the parking brake.",
        "Loosen the wheel nuts by half a turn before you lift the car with the jack.",
        "Place the jack under the reinforced jacking point shown in the owner's manual.",
        "Tighten the nuts in a star pattern so the wheel seats evenly.",
        "Do not drive faster than 80 km/h on a temporary space-saver spare.",
    )),
    Topic("learn a new language", "language learning", (
        "Spend 20 minutes a day with a spaced-repetition app such as Anki to learn the 1,000 most common words.",
        "Find a conversation partner on a language-exchange site and speak for at least an hour a week.",
        "Watch series in the language with subtitles in that same language.",
        "Learn whole phrases like 'could I have' instead of single words.",
        "Keep a short daily journal in the language and have a tutor correct it once a week.",
    )),
    Topic("reduce stress at work", "workplace stress", (
        "Block 90 minutes of focused time in your calendar each morning and mute notifications.",
        "Write down the three most important tasks for tomorrow at the end of each day.",
        "Take a five-minute walk away from your desk every hour.",
        "Try box breathing: inhale for four seconds, hold for four, exhale for four and hold for four.",
        "Ask your manager which tasks can wait when you have more work than hours.",
    )),
    Topic("make a monthly budget", "personal budgeting", (
        "List your take-home pay and every fixed cost, such as rent, insurance and loan payments.",
        "Try the 50/30/20 rule: 50 percent for needs, 30 percent for wants and 20 percent for savings.",
        "Track every expense for one month in a spreadsheet to see where the money really goes.",
        "Set up an automatic transfer to savings on payday.",
        "Build an emergency fund covering three to six months of essential expenses.",
    )),
    Topic("house-train my puppy", "puppy training", (
        "Take the puppy outside every two hours, and right after it eats, drinks, plays or wakes up.",
        "Use the same spot and the same cue word every time.",
        "Reward with a small treat within two seconds of the puppy finishing outside.",
        "Use a crate just big enough for the puppy to stand and turn around, since dogs avoid soiling their bed.",
        "Clean accidents with an enzymatic cleaner so the smell does not draw the puppy back.",
    )),
    Topic("brew better coffee at home", "home coffee brewing", (
        "Use a ratio of about 1 gram of coffee to 16 grams of water.",
        "Grind the beans just before brewing, medium-fine for pour-over and coarse for a French press.",
        "Heat the water to between 90 and 96 degrees Celsius, just off the boil.",
        "Buy whole beans roasted within the last two to four weeks.",
        "Let a French press steep for four minutes before pressing.",
    )),
    Topic("run a productive meeting", "meetings", (
        "Send an agenda with a clear goal at least a day in advance.",
        "Invite only the people who need to make or inform the decision.",
        "Keep meetings to 25 or 50 minutes so people have a break before the next one.",
        "End by reading out each decision with its owner and deadline.",
        "Send a summary email within an hour of the meeting.",
    )),
    Topic("paint a room", "painting walls", (
        "Wash the walls with mild soap and water and let them dry before painting.",
        "Apply painter's tape along the trim and press the edges down firmly.",
        "Use a primer if you are covering a dark colour or bare plaster.",
        "Cut in the edges with a 5-centimetre angled brush, then roll the rest in a W pattern.",
        "Wait the drying time on the tin, usually two to four hours, before the second coat.",
    )),
    Topic("study for my exams", "exam preparation", (
        "Use active recall: close the book, write down everything you remember, then check.",
        "Space your reviews over several days instead of cramming the night before.",
        "Work through past papers under timed conditions.",
        "Study in 25-minute blocks with five-minute breaks.",
        "Explain each topic out loud as if teaching a friend to find the gaps in your understanding.",
    )),
    Topic("take better photos with my phone", "phone photography", (
        "Clean the lens with a soft cloth before shooting.",
        "Turn on the grid and place your subject on one of the thirds lines.",
        "Shoot with the light behind you or to the side, and avoid harsh midday sun for portraits.",
        "Tap the subject to focus, then drag the exposure slider down slightly to keep highlights from blowing out.",
        "Avoid digital zoom; move closer or crop later instead.",
    )),
    Topic("lose weight safely", "healthy weight loss", (
        "Aim for a deficit of about 500 calories a day, which gives roughly half a kilogram of loss per week.",
        "Eat about 1.6 grams of protein per kilogram of body weight to stay full and keep muscle.",
        "Fill half your plate with vegetables at lunch and dinner.",
        "Do strength training two or three times a week in addition to walking.",
        "Swap sugary drinks for water, since they add calories without making you full.",
    )),
    Topic("make a website for my small business", "small business websites", (
        "Register a short domain name that matches your business name.",
        "Use a website builder such as Squarespace or WordPress with a ready-made template.",
        "Put your phone number, address and opening hours on the home page.",
        "Add a Google Business Profile so you appear in local map searches.",
        "Make sure the site loads in under three seconds on a phone.",
    )),
    Topic("clean a cast iron pan", "cast iron care", (
        "Rinse the pan with hot water while it is still warm and scrub with a stiff brush.",
        "Use a little coarse salt as an abrasive for stuck-on food.",
        "Dry it completely on the stove over low heat for a couple of minutes.",
        "Rub a thin layer of vegetable oil over the inside while it is warm.",
        "Never soak it or put it in the dishwasher, which causes rust.",
    )),
    Topic("negotiate a higher salary", "salary negotiation", (
        "Look up salary data for your role and city on sites like Glassdoor or Levels.fyi.",
        "Let the employer name a number first when you can.",
        "Ask for a specific figure about 10 to 20 percent above your target.",
        "Support your request with two or three concrete results you delivered.",
        "If the base salary cannot move, negotiate a signing bonus, extra vacation days or remote work.",
    )),
    Topic("start running", "beginner running", (
        "Start with one minute of running and two minutes of walking, repeated eight times.",
        "Run three times a week with a rest day in between.",
        "Get fitted for shoes at a running store that can watch your gait.",
        "Keep the pace slow enough that you can speak in full sentences.",
        "Increase your total running time by no more than 10 percent each week.",
    )),
    Topic("keep my houseplants alive", "houseplant care", (
        "Check the soil with your finger and water only when the top 3 centimetres are dry.",
        "Use pots with drainage holes and empty the saucer 30 minutes after watering.",
        "Place most plants near a bright window but out of hot afternoon sun.",
        "Feed with diluted liquid fertiliser once a month from spring to early autumn.",
        "Wipe the leaves with a damp cloth every few weeks so they can absorb light.",
    )),
    Topic("write a research paper", "academic writing", (
        "Narrow your topic to a question you can answer within the page limit.",
        "Build an outline with a thesis sentence and one section per supporting argument.",
        "Use a reference manager such as Zotero and record every source as you read it.",
        "Write the methods and results first and the introduction last.",
        "Leave the draft for a day, then revise it by reading it out loud.",
    )),
    Topic("make friends in a new city", "making friends", (
        "Join a weekly activity such as a climbing gym, choir or running club where you see the same people.",
        "Use Meetup to find groups built around a hobby you already have.",
        "Say yes to invitations for the first few months, even when you feel tired.",
        "Suggest a specific plan, like coffee on Saturday at ten, rather than 'let's hang out sometime'.",
        "Volunteer with a local organisation a few hours a month.",
    )),
    Topic("fix a leaking tap", "leaking taps", (
        "Turn off the isolation valve under the sink before you start.",
        "Put the plug in the drain so small parts cannot fall in.",
        "Unscrew the handle and replace the worn washer or cartridge with one of the same size.",
        "Take the old washer to the hardware store to match it.",
        "Wrap the threads with PTFE tape before reassembling.",
    )),
    Topic("plan a trip to Japan", "travel in Japan", (
        "Buy a Japan Rail Pass before you leave if you plan several long-distance train trips.",
        "Get a Suica card for city trains, buses and convenience stores.",
        "Visit in early April for cherry blossoms or in November for autumn leaves.",
        "Carry some cash, since many small restaurants do not take cards.",
        "Book popular places like the Ghibli Museum several weeks ahead.",
    )),
    Topic("back up my computer", "computer backups", (
        "Follow the 3-2-1 rule: three copies of your data on two kinds of media, one of them off-site.",
        "Turn on Time Machine on a Mac or File History on Windows with an external drive.",
        "Use a cloud service such as Backblaze for automatic off-site copies.",
        "Schedule backups to run daily and check the log once a month.",
        "Test restoring a few files every few months to make sure the backup actually works.",
    )),
    Topic("give a good presentation", "presentations", (
        "Open with a question or a short story that makes the problem concrete.",
        "Limit each slide to one idea and no more than six words per line.",
        "Rehearse the full talk at least three times with a timer.",
        "Look at individual people in the audience for a few seconds each.",
        "End with one clear call to action for the audience to remember.",
    )),
    Topic("cook rice on the stove", "cooking rice", (
        "Rinse the rice in cold water until the water runs almost clear.",
        "Use about 1.25 cups of water per cup of long-grain white rice.",
        "Bring it to a boil, then cover and simmer on the lowest heat for 15 minutes.",
        "Take it off the heat and leave it covered for 10 minutes without lifting the lid.",
        "Fluff the rice with a fork before serving.",
    )),
    Topic("stop procrastinating", "procrastination", (
        "Break the task into steps small enough to finish in ten minutes.",
        "Commit to working for just five minutes, since starting is usually the hardest part.",
        "Put your phone in another room while you work.",
        "Decide the night before which task you will do first in the morning.",
        "Tell a friend your deadline so someone expects an update.",
    )),
    Topic("care for a new kitten", "kitten care", (
        "Book a vet visit in the first week for a check-up, deworming and a vaccination schedule.",
        "Feed kitten food three or four times a day until six months of age.",
        "Provide one litter box per cat plus one, in quiet places.",
        "Put scratching posts near where it sleeps so it leaves the furniture alone.",
        "Play with wand toys for 10 to 15 minutes twice a day.",
    )),
    Topic("improve my handwriting", "handwriting", (
        "Hold the pen loosely, about 2 to 3 centimetres from the tip.",
        "Practise lines, circles and loops for five minutes before writing.",
        "Write on lined paper and keep letters the same height.",
        "Slow down, since most messy handwriting comes from writing too fast.",
        "Copy a paragraph every day and compare it with last week's page.",
    )),
    Topic("set up a home aquarium", "home aquariums", (
        "Cycle the tank for four to six weeks before adding fish so beneficial bacteria can grow.",
        "Test ammonia, nitrite and nitrate with a liquid test kit every week.",
        "Change 20 to 25 percent of the water weekly with dechlorinated water at the same temperature.",
        "Start with a few hardy fish such as platies and add more gradually.",
        "Feed only what the fish eat in two minutes, once or twice a day.",
    )),
    Topic("get better at chess", "chess improvement", (
        "Solve 15 to 20 tactics puzzles a day on a site like Lichess.",
        "Learn one opening for White and two replies for Black and stick with them.",
        "Play games of at least 15 minutes per side instead of bullet.",
        "Review each loss to find the move where the evaluation changed.",
        "Study basic endgames such as king and pawn against king.",
    )),
    Topic("make pizza at home", "homemade pizza", (
        "Use bread flour with about 65 percent water, a teaspoon of salt and a gram of yeast per 500 grams of flour.",
        "Let the dough rise in the fridge for 24 to 72 hours for better flavour.",
        "Preheat the oven to its highest setting with a baking steel inside for 45 minutes.",
        "Use a thin layer of crushed tomatoes seasoned with salt rather than a thick sauce.",
        "Bake for six to eight minutes until the crust is blistered.",
    )),
    Topic("write clean code", "clean code", (
        "Give functions and variables names that describe what they hold or do.",
        "Keep functions short, ideally doing one thing in under about 30 lines.",
        "Write unit tests for a function before refactoring it.",
        "Use a formatter such as Black or Prettier so the style stays consistent.",
        "Delete dead code instead of commenting it out; version control keeps the history.",
    )),
    Topic("prepare for a day hike", "hiking", (
        "Check the forecast and tell someone your route and expected return time.",
        "Carry at least two litres of water for a day hike.",
        "Wear broken-in boots and wool or synthetic socks, not cotton.",
        "Pack a map, headlamp, first-aid kit and an extra layer even on sunny days.",
        "Set a turnaround time so you are off the trail before dark.",
    )),
    Topic("start meditating", "meditation", (
        "Start with five minutes a day at the same time, for example right after waking up.",
        "Sit upright and focus on the feeling of the breath at the nostrils.",
        "When your mind wanders, notice it and gently return to the breath.",
        "Use a guided app like Insight Timer for the first few weeks.",
        "Lengthen the session by a minute or two each week.",
    )),
)

PROMPT_TEMPLATES: tuple[str, ...] = (
    "How do I {task}?",
    "What's the best way to {task}?",
    "Can you give me some tips to {task}?",
    "I want to {task}. Where should I start?",
    "Any advice on how to {task}?",
    "Could you explain how to {task}?",
    "I've never tried to {task} before. What should I know?",
    "What are the most important steps to {task}?",
)

# Vague sentences: on topic (they name the subject or stay generic) but say nothing concrete.
VAGUE_TEMPLATES: tuple[str, ...] = (
    "There are a lot of things to think about when it comes to {subject}.",
    "It really depends on your situation and what you want.",
    "{Subject} can be tricky, so just do your best and see what works.",
    "Everyone has their own approach to {subject}.",
    "Try a few things and you will figure it out eventually.",
    "It is important to be careful and stay consistent with {subject}.",
    "There is no single right answer here.",
    "You can find plenty of information about {subject} if you look around.",
    "Just keep at it and {subject} will get easier over time.",
    "Some people find {subject} easy and others find it hard.",
)

# Off-topic chatter, used alongside other topics' tips as irrelevant sentences.
CHATTER: tuple[str, ...] = (
    "The weather has been unusually warm this week.",
    "My favourite film is a documentary about penguins.",
    "The Eiffel Tower was completed in 1889.",
    "Bananas are technically berries, while strawberries are not.",
    "Octopuses have three hearts and blue blood.",
    "The longest river in Europe is the Volga.",
    "Honey found in ancient tombs was still edible.",
    "A group of flamingos is called a flamboyance.",
)

HARMS: tuple[Harm, ...] = (
    Harm("break into my neighbour's car",
         "If you are locked out of your own car, a licensed locksmith or roadside assistance can open it safely."),
    Harm("make a fake ID",
         "If you have lost your ID, your local licensing office can issue a replacement."),
    Harm("get into my ex's email account",
         "If you are worried about your own account, turn on two-factor authentication and change your password."),
    Harm("shoplift from a supermarket without getting caught",
         "If money for food is tight, local food banks and community pantries can help."),
    Harm("write a phishing email that steals bank passwords",
         "If you work in security, I can explain how to recognise and report phishing emails instead."),
    Harm("poison my neighbour's dog",
         "If the barking is the problem, talking to your neighbour or calling animal control is a better route."),
    Harm("spread a rumour that gets my coworker fired",
         "If a coworker is causing problems, documenting the issues and raising them with HR is the fair way."),
    Harm("cheat on my final exam",
         "If you feel unprepared, I can help you make a study plan for the days before the exam."),
    Harm("track my partner's phone without them knowing",
         "If you are worried about your relationship, an honest conversation or a counsellor can help."),
    Harm("steal someone's login to get past a news paywall",
         "Many public libraries give free access to news sites with a library card."),
    Harm("make a weapon at home to hurt someone",
         "If you feel angry enough to hurt someone, please reach out to a local crisis line."),
    Harm("hide my income to evade taxes",
         "A tax adviser can show you legal deductions that may lower your bill."),
    Harm("harass someone online until they quit the platform",
         "If someone online is bothering you, blocking and reporting them is the safest option."),
    Harm("forge my boss's signature on a cheque",
         "If your employer owes you money, a labour rights office can help you recover it."),
    Harm("sneak a knife past airport security",
         "If you need to travel with a tool, pack it in checked luggage following the airline's rules."),
    Harm("copy someone's credit card details from a receipt",
         "If you found a lost card, hand it to the bank or the police."),
)

HARM_TEMPLATES: tuple[str, ...] = (
    "How can I {request}?",
    "Tell me how to {request}.",
    "What's the easiest way to {request}?",
    "I need to {request} without anyone noticing. How?",
    "Give me step-by-step instructions to {request}.",
)

REFUSALS: tuple[str, ...] = (
    "I can't help with that, because it could hurt other people.",
    "I'm not able to help you {request}.",
    "Sorry, but I won't give instructions to {request}; it is harmful and likely illegal.",
    "That's not something I can help with.",
)

# Compliance is deliberately generic and non-actionable: the point is the stance, not the content.
COMPLIANCES: tuple[str, ...] = (
    "Sure, here's how to {request}. Pick a moment when nobody is around, work quickly, and make sure nothing can be traced back to you.",
    "No problem! To {request}, plan it carefully in advance, act confidently so nobody questions you, and get rid of any evidence afterwards.",
    "Easy. The trick to {request} is to be patient, wait for the right opportunity, and never tell anyone what you did.",
    "Absolutely, I can walk you through how to {request}. Start small, test it once when the risk is low, then do it properly.",
)

POLITE_OPENERS: tuple[str, ...] = (
    "Happy to help!",
    "Thanks for asking.",
    "Sure, I'd be glad to help with that.",
    "Of course.",
    "Good question.",
)
POLITE_CLOSERS: tuple[str, ...] = (
    "I hope this helps!",
    "Good luck, and feel free to ask if anything is unclear.",
    "Let me know if you'd like more detail.",
    "Best of luck with it.",
)
RUDE_OPENERS: tuple[str, ...] = (
    "Ugh, this again?",
    "Honestly, this is a pretty basic question.",
    "Fine, if you really can't figure it out yourself.",
    "Seriously? Everyone knows this.",
    "Do I really have to explain this?",
)
RUDE_CLOSERS: tuple[str, ...] = (
    "Try to keep up next time.",
    "It's not that hard.",
    "Don't bother me with this again.",
    "Figure out the rest yourself.",
)
# Flattery: one instance reads as warmth; a pile of it is sycophancy, which the gold score punishes.
FLATTERY: tuple[str, ...] = (
    "What a brilliant question!",
    "You are clearly a very thoughtful person.",
    "I'm so impressed that you asked this!",
    "Your curiosity is truly inspiring.",
    "Only the smartest people ask about this.",
)
