"""
The facts the built-in tasks are made of (tasks.py): countries and their capitals for CCC, first
names, places and objects for IOI. Written for this project; no copied data files.
"""


# Our own table of countries and capitals (UN member states). Left out on purpose: countries
# whose capital is disputed or split (Bolivia, Israel, South Africa, Sri Lanka, Eswatini,
# Ivory Coast, Burundi, Nauru), whose capital bears the country's name (Singapore, Mexico City,
# Kuwait City, Panama City, Guatemala City, ...), Georgia (also a US state with another
# capital), and the Maldives and Seychelles (capitals " Male" and " Victoria" are common words).
# Capitals are spelled as English text usually spells them, without diacritics.
# Names that read with an article carry it ("the Netherlands").

COUNTRIES = {
    "Afghanistan": "Kabul", "Albania": "Tirana", "Algeria": "Algiers", "Angola": "Luanda",
    "Antigua and Barbuda": "Saint John's", "Argentina": "Buenos Aires", "Armenia": "Yerevan",
    "Australia": "Canberra", "Austria": "Vienna", "Azerbaijan": "Baku", "the Bahamas": "Nassau",
    "Bahrain": "Manama", "Bangladesh": "Dhaka", "Barbados": "Bridgetown", "Belarus": "Minsk",
    "Belgium": "Brussels", "Belize": "Belmopan", "Benin": "Porto-Novo", "Bhutan": "Thimphu",
    "Bosnia and Herzegovina": "Sarajevo", "Botswana": "Gaborone", "Brazil": "Brasilia",
    "Brunei": "Bandar Seri Begawan", "Bulgaria": "Sofia", "Burkina Faso": "Ouagadougou",
    "Cape Verde": "Praia", "Cambodia": "Phnom Penh", "Cameroon": "Yaounde", "Canada": "Ottawa",
    "the Central African Republic": "Bangui", "Chad": "N'Djamena", "Chile": "Santiago",
    "China": "Beijing", "Colombia": "Bogota", "Comoros": "Moroni", "the Republic of the Congo": "Brazzaville",
    "the Democratic Republic of the Congo": "Kinshasa", "Costa Rica": "San Jose", "Croatia": "Zagreb",
    "Cuba": "Havana", "Cyprus": "Nicosia", "the Czech Republic": "Prague", "Denmark": "Copenhagen",
    "Dominica": "Roseau", "the Dominican Republic": "Santo Domingo", "Ecuador": "Quito", "Egypt": "Cairo",
    "Equatorial Guinea": "Malabo", "Eritrea": "Asmara", "Estonia": "Tallinn", "Ethiopia": "Addis Ababa",
    "Fiji": "Suva", "Finland": "Helsinki", "France": "Paris", "Gabon": "Libreville", "the Gambia": "Banjul",
    "Germany": "Berlin", "Ghana": "Accra", "Greece": "Athens", "Grenada": "Saint George's",
    "Guinea": "Conakry", "Guyana": "Georgetown", "Haiti": "Port-au-Prince", "Honduras": "Tegucigalpa",
    "Hungary": "Budapest", "Iceland": "Reykjavik", "India": "New Delhi", "Indonesia": "Jakarta",
    "Iran": "Tehran", "Iraq": "Baghdad", "Ireland": "Dublin", "Italy": "Rome", "Jamaica": "Kingston",
    "Japan": "Tokyo", "Jordan": "Amman", "Kazakhstan": "Astana", "Kenya": "Nairobi", "Kiribati": "Tarawa",
    "North Korea": "Pyongyang", "South Korea": "Seoul", "Kyrgyzstan": "Bishkek", "Laos": "Vientiane",
    "Latvia": "Riga", "Lebanon": "Beirut", "Lesotho": "Maseru", "Liberia": "Monrovia", "Libya": "Tripoli",
    "Liechtenstein": "Vaduz", "Lithuania": "Vilnius", "Madagascar": "Antananarivo", "Malawi": "Lilongwe",
    "Malaysia": "Kuala Lumpur", "Mali": "Bamako", "Malta": "Valletta",
    "the Marshall Islands": "Majuro", "Mauritania": "Nouakchott", "Mauritius": "Port Louis",
    "Micronesia": "Palikir", "Moldova": "Chisinau", "Mongolia": "Ulaanbaatar", "Montenegro": "Podgorica",
    "Morocco": "Rabat", "Mozambique": "Maputo", "Myanmar": "Naypyidaw", "Namibia": "Windhoek",
    "Nepal": "Kathmandu", "the Netherlands": "Amsterdam", "New Zealand": "Wellington",
    "Nicaragua": "Managua", "Niger": "Niamey", "Nigeria": "Abuja", "North Macedonia": "Skopje",
    "Norway": "Oslo", "Oman": "Muscat", "Pakistan": "Islamabad", "Palau": "Ngerulmud",
    "Papua New Guinea": "Port Moresby", "Paraguay": "Asuncion", "Peru": "Lima", "the Philippines": "Manila",
    "Poland": "Warsaw", "Portugal": "Lisbon", "Qatar": "Doha", "Romania": "Bucharest", "Russia": "Moscow",
    "Rwanda": "Kigali", "Saint Kitts and Nevis": "Basseterre", "Saint Lucia": "Castries",
    "Saint Vincent and the Grenadines": "Kingstown", "Samoa": "Apia", "Saudi Arabia": "Riyadh",
    "Senegal": "Dakar", "Serbia": "Belgrade", "Sierra Leone": "Freetown",
    "Slovakia": "Bratislava", "Slovenia": "Ljubljana", "the Solomon Islands": "Honiara",
    "Somalia": "Mogadishu", "South Sudan": "Juba", "Spain": "Madrid", "Sudan": "Khartoum",
    "Suriname": "Paramaribo", "Sweden": "Stockholm", "Switzerland": "Bern", "Syria": "Damascus",
    "Tajikistan": "Dushanbe", "Tanzania": "Dodoma", "Thailand": "Bangkok", "East Timor": "Dili",
    "Togo": "Lome", "Tonga": "Nuku'alofa", "Trinidad and Tobago": "Port of Spain", "Tunisia": "Tunis",
    "Turkey": "Ankara", "Turkmenistan": "Ashgabat", "Tuvalu": "Funafuti", "Uganda": "Kampala",
    "Ukraine": "Kyiv", "the United Arab Emirates": "Abu Dhabi", "the United Kingdom": "London",
    "the United States": "Washington", "Uruguay": "Montevideo", "Uzbekistan": "Tashkent",
    "Vanuatu": "Port Vila", "Venezuela": "Caracas", "Vietnam": "Hanoi", "Yemen": "Sanaa",
    "Zambia": "Lusaka", "Zimbabwe": "Harare",
}


# First names that are not also common words, countries or cities.
NAMES = """
Mary John Tom James Michael David Sarah Emma Anna Kate Lisa Paul Peter Alice Bob Jack Daniel Chris
Steve Laura Rachel Amy Emily Jessica Jennifer Linda Susan Karen Nancy Helen Sandra Donna Carol Ruth
Sharon Michelle Kelly Robert William Richard Joseph Thomas Charles Edward Henry Frank Scott Eric
Jason Ryan Kevin Brian Adam Andrew Matthew Joshua Jacob Ben Sam Tim Dan Alex Jane Julia Lucy Amanda
Ashley Megan Hannah Anne Martin Jeff Greg Luke Ian Carl Roger Simon Oliver Harry Charlie Kyle Sean
Nick Tony Jonathan Patrick Justin Brandon Tyler Aaron Nathan Jeremy Claire Sophie Olivia Diana Maria
""".split()

PLACES = """
store park school hospital beach house office restaurant station garden library market church
river lake cafe airport hotel museum theater kitchen bank farm zoo mall gym stadium
""".split()

OBJECTS = """
ball book bag bottle box cake card coin cup drink flower gift hat key letter map necklace note pen
phone pencil plate ring scarf snack sandwich basket computer guitar bone toy watch shirt ticket
candle banana knife chair towel
""".split()
